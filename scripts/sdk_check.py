"""Calls the local emulator with the vendor's official Python SDK and checks the answers.

Run by scripts/sdk-check inside a throwaway venv, against an emulator seeded with the groups
GID_sdkcheck (for deregistrations) and GID_sdklist (250 ids, listed by cursor). Exercises the
SDK's default V3 signing (ACS3-HMAC-SHA256) and its legacy V2 signing (HMAC-SHA1), long-term and
STS keys, and parses List and Get answers into the SDK's own models.
Prints "N passed, N failed"; exits non-zero on any failure.
"""

import argparse
import json
import sys
import urllib.request

from alibabacloud_onsmqtt20200420 import models as mqtt_models
from alibabacloud_onsmqtt20200420.client import Client
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_tea_util import models as util_models

INSTANCE = "mqtt-cn-sdkcheck01"
LIST_GROUP = "GID_sdklist"
LIST_SIZE = 250
results = {"passed": 0, "failed": 0}
next_device = iter(range(10_000))


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


def attempt(call):
    """Runs an SDK call; returns (status, code, request_id, body model or None)."""
    try:
        resp = call()
        return resp.status_code, "OK", resp.body.request_id, resp.body
    except Exception as e:  # the SDK raises its own exception types carrying code and status
        status = getattr(e, "status_code", None) or getattr(e, "statusCode", None)
        data = getattr(e, "data", None) or {}
        return status, getattr(e, "code", type(e).__name__), data.get("RequestId"), None


def unregister(c, client_id):
    """Returns (status, code, request_id); code is "OK" on success."""
    req = mqtt_models.UnRegisterDeviceCredentialRequest(client_id=client_id, instance_id=INSTANCE)
    return attempt(lambda: c.un_register_device_credential(req))[:3]


def list_page(c, page_no, page_size, token=None, group=LIST_GROUP):
    req = mqtt_models.ListDeviceCredentialClientIdRequest(
        instance_id=INSTANCE,
        group_id=group,
        page_no=str(page_no),
        page_size=str(page_size),
        next_token=token,
    )
    return attempt(
        lambda: c.list_device_credential_client_id_with_options(req, util_models.RuntimeOptions())
    )


def get_credential(c, client_id):
    req = mqtt_models.GetDeviceCredentialRequest(client_id=client_id, instance_id=INSTANCE)
    return attempt(lambda: c.get_device_credential_with_options(req, util_models.RuntimeOptions()))


def verdict(name, ok, detail):
    results["passed" if ok else "failed"] += 1
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")


def check_listing(label, c):
    """Follows NextToken through the whole list group; checks the parsed models."""
    seen, pages, token, problems = [], 0, None, []
    while pages < 10:
        status, code, request_id, body = list_page(c, pages + 1, 100, token)
        pages += 1
        if code != "OK":
            problems.append(f"page {pages}: HTTP {status} {code}")
            break
        page = body.device_credential_client_id_list
        if not (request_id and len(request_id) == 36):
            problems.append(f"page {pages}: RequestId {request_id!r}")
        if (page.total, page.page_no, page.page_size) != (str(LIST_SIZE), str(pages), "100"):
            problems.append(f"page {pages}: Total/PageNo/PageSize {page.total!r}/{page.page_no!r}/{page.page_size!r}")
        seen.extend(page.client_id_list or [])
        token = page.next_token
        if not token:
            break
    ok = (
        not problems
        and pages == 3
        and len(seen) == LIST_SIZE == len(set(seen))
        and all(i.startswith(LIST_GROUP + "@@@") for i in seen)
    )
    verdict(f"{label}: list {LIST_GROUP} by NextToken", ok, f"{len(seen)} ids in {pages} pages {problems}")
    status, code, _, _ = list_page(c, 1, 101)
    verdict(f"{label}: PageSize 101", (status, code) == (400, "InvalidParameter.PageSize"), f"HTTP {status} {code}")
    status, code, _, body = list_page(c, 1, 10, group="GID_sdkempty")
    empty = body is not None and body.device_credential_client_id_list.total == "0"
    verdict(f"{label}: an unknown group lists empty", empty and not body.device_credential_client_id_list.client_id_list, f"HTTP {status} {code}")
    # Successful list calls: every page and the empty group's.
    return pages + 1


def check_get(label, c):
    client_id = f"{LIST_GROUP}@@@dev-7"
    status, code, request_id, body = get_credential(c, client_id)
    cred = body.device_credential if body else None
    ok = (
        code == "OK"
        and request_id
        and cred.client_id == client_id
        and cred.instance_id == INSTANCE
        and isinstance(cred.create_time, int)
        and isinstance(cred.update_time, int)
        and cred.create_time > 1_600_000_000_000
        and isinstance(cred.device_access_key_id, str)
        and cred.device_access_key_id
        and isinstance(cred.device_access_key_secret, str)
        and len(cred.device_access_key_secret) >= 20
    )
    # Never print the secret itself.
    verdict(f"{label}: get {client_id}", ok, f"HTTP {status} {code}")
    status, code, _, _ = get_credential(c, f"{LIST_GROUP}@@@absent")
    verdict(f"{label}: get of an absent id", (status, code) == (400, "DeviceCredentialNotFound"), f"HTTP {status} {code}")
    # Successful get calls.
    return 1


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
    """The next id of the seeded GID_sdkcheck group (registered until deregistered)."""
    return f"GID_sdkcheck@@@dev-{next(next_device)}"



def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True, help="HOST:PORT of the emulator")
    args = parser.parse_args()
    ep = args.endpoint
    successes = 0
    billed_reads = 0

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
        billed_reads += check_listing(label, c)
        billed_reads += check_get(label, c)

    with urllib.request.urlopen(f"http://{ep}/__emulator/stats", timeout=5) as r:
        stats = json.load(r)
    ok = stats["successes"] == successes and stats["successes_by_instance"].get(INSTANCE) == successes
    verdict("emulator stats count the deregistrations", ok, f"{stats['successes']} (want {successes})")
    by_action = stats["by_action"]
    reads = by_action["ListDeviceCredentialClientId"]["successes"] + by_action["GetDeviceCredential"]["successes"]
    billed = stats["billed_by_instance"].get(INSTANCE)
    ok = reads == billed_reads and billed == successes + billed_reads
    verdict("emulator stats bill the List and Get successes", ok, f"{reads} reads, {billed} billed (want {billed_reads}, {successes + billed_reads})")

    print(f"{results['passed']} passed, {results['failed']} failed")
    # Successful get calls.
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
