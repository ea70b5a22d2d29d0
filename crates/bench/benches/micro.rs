//! Micro-benchmarks (criterion) of the per-call work that does not touch the network: signing a
//! call (both schemes, with the timestamp and nonce as the client makes them) and classifying an
//! answer (success, throttle, a final error, a transport error).
//!
//! `cargo bench --bench micro`; `cargo bench --bench micro -- --quick` for a short run.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use deregd::api::signer::{sign_v2, sign_v3, timestamp, CallToSign, SigningKey};
use deregd::api::{Answer, TransportError};
use deregd::outcome::classify;

const HOST: &str = "onsmqtt.cn-hangzhou.aliyuncs.com";
const PARAMS: [(&str, &str); 2] = [
    ("ClientId", "GID_fleet@@@device-000123456"),
    ("InstanceId", "post-cn-0pp12gl0001"),
];

const SECRET: &str = "benchmark-secret-not-real";

fn call<'a>(
    timestamp: &'a str,
    nonce: &'a str,
    token: Option<&'a str>,
    key: &'a SigningKey,
) -> CallToSign<'a> {
    CallToSign {
        host: HOST,
        action: "UnRegisterDeviceCredential",
        version: "2020-04-20",
        params: &PARAMS,
        access_key_id: "LTAI5tBenchmarkKeyId",
        key,
        security_token: token,
        timestamp,
        nonce,
    }
}

fn signing(c: &mut Criterion) {
    let at = timestamp(chrono::Utc::now());
    let nonce = "6f1d1c9e0f4a4b7e9d2c3b4a5f6e7d8c";
    // Made once per client, as the daemon does.
    let (v3, v2) = (SigningKey::v3(SECRET), SigningKey::v2(SECRET));
    let mut group = c.benchmark_group("signing");
    group.bench_function("v3 (ACS3-HMAC-SHA256)", |b| {
        b.iter(|| sign_v3(black_box(&call(&at, nonce, None, &v3))))
    });
    group.bench_function("v3 with an STS token", |b| {
        b.iter(|| {
            sign_v3(black_box(&call(
                &at,
                nonce,
                Some("sts-token-for-benchmarks"),
                &v3,
            )))
        })
    });
    group.bench_function("v2 (HMAC-SHA1)", |b| {
        b.iter(|| sign_v2(black_box(&call(&at, nonce, None, &v2))))
    });
    group.bench_function("timestamp", |b| {
        b.iter(|| timestamp(black_box(chrono::Utc::now())))
    });
    group.finish();
}

fn answer(status: u16, body: &'static str) -> Result<Answer, TransportError> {
    Ok(Answer {
        status,
        body: Bytes::from_static(body.as_bytes()),
        request_id: Some("3A1C2B4D-0000-4000-8000-000000000001".into()),
        retry_after: None,
    })
}

fn classification(c: &mut Criterion) {
    let cases = [
        (
            "success",
            answer(
                200,
                r#"{"RequestId":"3A1C2B4D-0000-4000-8000-000000000001"}"#,
            ),
        ),
        (
            "throttled (Throttling.User)",
            answer(
                400,
                r#"{"RequestId":"3A1C2B4D-0000-4000-8000-000000000002","HostId":"onsmqtt.cn-hangzhou.aliyuncs.com","Code":"Throttling.User","Message":"Request was denied due to user flow control.","Recommend":"https://api.aliyun.com/troubleshoot"}"#,
            ),
        ),
        (
            "final error (InvalidParameter)",
            answer(
                400,
                r#"{"RequestId":"3A1C2B4D-0000-4000-8000-000000000003","HostId":"onsmqtt.cn-hangzhou.aliyuncs.com","Code":"InvalidParameter","Message":"The specified parameter ClientId is not valid.","Recommend":"https://api.aliyun.com/troubleshoot"}"#,
            ),
        ),
        ("transport timeout", Err(TransportError::Timeout)),
    ];
    let mut group = c.benchmark_group("classification");
    for (name, answer) in &cases {
        group.bench_function(*name, |b| b.iter(|| classify(black_box(answer))));
    }
    group.finish();
}

criterion_group!(benches, signing, classification);
criterion_main!(benches);
