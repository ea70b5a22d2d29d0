"""The baseline an operator would write: the vendor's official Python SDK on a thread pool,
capped the naive way (start at most CAP calls per calendar second), no retries.

Run by benches/suite.rs inside the throwaway venv that bench/run creates. Reads one ClientId
per line from --ids, calls UnRegisterDeviceCredential for each against the emulator at
--endpoint (plain http), and prints one JSON object: calls, successes, throttled, other
failures (none of them retried) and the CPU seconds spent in the calling phase.
"""

import argparse
import json
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from alibabacloud_onsmqtt20200420 import models as mqtt_models
from alibabacloud_onsmqtt20200420.client import Client
from alibabacloud_tea_openapi import models as open_api_models


class PerSecondCap:
    """At most `cap` starts per calendar second: the naive limiter that bunches calls."""

    def __init__(self, cap):
        self.cap = cap
        self.lock = threading.Lock()
        self.second = None
        self.started = 0

    def acquire(self):
        while True:
            with self.lock:
                now = time.time()
                second = int(now)
                if second != self.second:
                    self.second = second
                    self.started = 0
                if self.started < self.cap:
                    self.started += 1
                    return
                wait = second + 1 - now
            time.sleep(wait)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True, help="HOST:PORT of the emulator")
    parser.add_argument("--instance", required=True)
    parser.add_argument("--ids", required=True, help="file with one ClientId per line")
    parser.add_argument("--cap", type=int, required=True, help="calls started per second")
    parser.add_argument("--workers", type=int, default=64)
    args = parser.parse_args()

    with open(args.ids) as f:
        ids = [line.strip() for line in f if line.strip()]

    local = threading.local()

    def client():
        if not hasattr(local, "client"):
            config = open_api_models.Config(
                access_key_id="testid",
                access_key_secret="testsecret",
                endpoint=args.endpoint,
                protocol="http",
                connect_timeout=5000,
                read_timeout=10000,
            )
            local.client = Client(config)
        return local.client

    cap = PerSecondCap(args.cap)
    counts = {"successes": 0, "throttled": 0, "other_failures": 0}
    counts_lock = threading.Lock()

    def call(client_id):
        cap.acquire()
        req = mqtt_models.UnRegisterDeviceCredentialRequest(
            client_id=client_id, instance_id=args.instance
        )
        try:
            client().un_register_device_credential(req)
            key = "successes"
        except Exception as e:  # the SDK raises its own exception types carrying the code
            code = str(getattr(e, "code", type(e).__name__))
            key = "throttled" if code.startswith("Throttling") else "other_failures"
        with counts_lock:
            counts[key] += 1

    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.time()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        list(pool.map(call, ids))
    elapsed = time.time() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = dict(counts)
    out["calls"] = len(ids)
    out["not_retried"] = counts["throttled"] + counts["other_failures"]
    out["elapsed_s"] = elapsed
    out["calling_cpu_s"] = cpu
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
