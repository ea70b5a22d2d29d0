"""Calls the local emulator with the vendor's official Python SDK and checks the answers.

Run by scripts/sdk-check inside a throwaway venv. Exercises the SDK's default V3 signing
(ACS3-HMAC-SHA256) and its legacy V2 signing (HMAC-SHA1), long-term and STS keys.
Prints "N passed, N failed"; exits non-zero on any failure.
"""

import argparse
import json
import sys
import urllib.request
import uuid

from alibabacloud_onsmqtt20200420 import models as mqtt_models
from alibabacloud_onsmqtt20200420.client import Client
from alibabacloud_tea_openapi import models as open_api_models

INSTANCE = "mqtt-cn-sdkcheck01"
results = {"passed": 0, "failed": 0}


def client(endpoint, key_id="testid", secret="testsecret", token=None, v2=False):
    config = open_api_models.Config(
        access_key_id=key_id,
        access_key_secret=secret,
        security_token=token,
        endpoint=endpoint,
        protocol="http",
        connect_timeout=5000,
        read_timeout=10000,
    )
    if v2:
        config.signature_algorithm = "v2"
    return Client(config)


def unregister(c, client_id):
    """Returns (status, code, request_id); code is "OK" on success."""
    req = mqtt_models.UnRegisterDeviceCredentialRequest(client_id=client_id, instance_id=INSTANCE)
    try:
        resp = c.un_register_device_credential(req)
        return resp.status_code, "OK", resp.body.request_id
    except Exception as e:  # the SDK raises its own exception types carrying code and status
        status = getattr(e, "status_code", None) or getattr(e, "statusCode", None)
        data = getattr(e, "data", None) or {}
        return status, getattr(e, "code", type(e).__name__), data.get("RequestId")


def check(name, got, want_status, want_code):
    status, code, request_id = got
    ok = status == want_status and (
        code == want_code or (want_code.endswith(".*") and str(code).startswith(want_code[:-1]))
    )
    if ok and want_status == 200:
        ok = bool(request_id) and len(request_id) == 36
    results["passed" if ok else "failed"] += 1
    mark = "ok  " if ok else "FAIL"
    print(f"{mark} {name}: got HTTP {status} {code} (want {want_status} {want_code})")


def fresh_id():
    return "GID_sdkcheck@@@" + uuid.uuid4().hex[:16]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True, help="HOST:PORT of the emulator")
    args = parser.parse_args()
    ep = args.endpoint
    successes = 0

    for label, v2 in (("V3 (SDK default)", False), ("V2 HMAC-SHA1", True)):
        c = client(ep, v2=v2)
        ids = [fresh_id() for _ in range(3)]
        for i, cid in enumerate(ids):
            check(f"{label}: unregister #{i + 1}", unregister(c, cid), 200, "OK")
            successes += 1
        check(f"{label}: repeat is not found", unregister(c, ids[0]), 400, "DeviceCredentialNotFound")
        bad = client(ep, secret="wrong-secret", v2=v2)
        check(f"{label}: wrong secret", unregister(bad, fresh_id()), 400, "SignatureDoesNotMatch")
        unknown = client(ep, key_id="nobody", v2=v2)
        check(f"{label}: unknown key", unregister(unknown, fresh_id()), 404, "InvalidAccessKeyId.NotFound")
        sts = client(ep, key_id="STS.sdk", secret="stssecret", token="ststoken", v2=v2)
        check(f"{label}: STS key with its token", unregister(sts, fresh_id()), 200, "OK")
        successes += 1
        sts_bad = client(ep, key_id="STS.sdk", secret="stssecret", token="other", v2=v2)
        check(f"{label}: STS key with a wrong token", unregister(sts_bad, fresh_id()), 400, "InvalidSecurityToken.*")
        check(f"{label}: malformed ClientId", unregister(c, "GID_x@@@y"), 400, "InvalidParameter.ClientId")

    with urllib.request.urlopen(f"http://{ep}/__emulator/stats", timeout=5) as r:
        stats = json.load(r)
    ok = stats["by_code"].get("OK") == successes and stats["successes_by_instance"].get(INSTANCE) == successes
    results["passed" if ok else "failed"] += 1
    print(f"{'ok  ' if ok else 'FAIL'} emulator stats count {stats['by_code'].get('OK')} successes (want {successes})")

    print(f"{results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
