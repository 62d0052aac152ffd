//! Webhook authentication over HTTP: JustCall v1 and Standard Webhooks,
//! passing and failing, including odd and empty signatures.

use chrono::Utc;
use serde_json::Value;
use switchboard::config::WebhookAuth;
use switchboard::intake::auth::{self, JC_SIGNATURE, JC_SIGNATURE_VERSION, JC_TIMESTAMP, SW_ID, SW_SIGNATURE, SW_TIMESTAMP};

use crate::harness::{Recorder, TenantSpec, TestHost, fixture};

const JC_SECRET: &str = "ea39089c40790e9dc7a080ec95e849b8fa0fa5fb";
const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn host() -> TestHost {
    let jc = Recorder::start().await;
    TestHost::start(vec![
        TenantSpec::new("jc", &jc.url).auth(WebhookAuth::JustCallV1, JC_SECRET),
        TenantSpec::new("sw", &jc.url).auth(WebhookAuth::StandardWebhooks, SW_SECRET),
    ])
    .await
}

type Headers = Vec<(&'static str, String)>;

fn jc_headers(host: &TestHost, type_name: &str, ts: &str, secret: &str) -> Headers {
    let sig = auth::justcall_v1_signature(secret, &format!("{}/webhooks/jc", host.url), type_name, ts);
    vec![(JC_SIGNATURE, sig), (JC_SIGNATURE_VERSION, "v1".into()), (JC_TIMESTAMP, ts.into())]
}

fn now_jc() -> String {
    Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

#[tokio::test]
async fn justcall_v1_accepts_signed_and_rejects_the_rest() {
    let host = host().await;
    let body = fixture("justcall-v2.1/sms.received.json");

    let (status, resp) = host
        .post("jc", body.clone(), &jc_headers(&host, "sms.received", &now_jc(), JC_SECRET))
        .await;
    assert_eq!(status, 202, "{resp}");

    let other = fixture("justcall-v2.1/sms.sent.json");
    let cases: Vec<(&str, Headers, &str)> = vec![
        ("no headers", vec![], "unauthorized: missing header x-justcall-signature"),
        (
            "wrong secret",
            jc_headers(&host, "sms.sent", &now_jc(), "not-the-secret"),
            "unauthorized: signature does not match",
        ),
        // The type is covered by the signature: a body claiming another type fails.
        (
            "tampered type",
            jc_headers(&host, "sms.received", &now_jc(), JC_SECRET),
            "unauthorized: signature does not match",
        ),
        (
            "empty signature",
            vec![(JC_SIGNATURE, String::new()), (JC_TIMESTAMP, now_jc())],
            "unauthorized: signature does not match",
        ),
        (
            "odd-length signature",
            vec![(JC_SIGNATURE, "abc".into()), (JC_TIMESTAMP, now_jc())],
            "unauthorized: signature does not match",
        ),
    ];
    for (what, headers, reason) in cases {
        let (status, resp) = host.post("jc", other.clone(), &headers).await;
        assert_eq!((status, resp["error"].as_str()), (401, Some(reason)), "{what}");
    }
    let stale = (Utc::now() - chrono::Duration::minutes(10)).format("%Y-%m-%d %H:%M:%S").to_string();
    let (status, resp) = host
        .post("jc", other.clone(), &jc_headers(&host, "sms.sent", &stale, JC_SECRET))
        .await;
    assert_eq!(status, 401);
    assert!(resp["error"].as_str().unwrap().contains("outside the accepted window"), "{resp}");
    assert_eq!(host.event_count("jc"), 1);
}

fn sw_headers(id: &str, ts: i64, body: &[u8], secret: &str) -> Vec<(&'static str, String)> {
    let ts = ts.to_string();
    let sig = auth::standard_webhooks_signature(secret, id, &ts, body);
    vec![(SW_ID, id.into()), (SW_TIMESTAMP, ts), (SW_SIGNATURE, sig)]
}

#[tokio::test]
async fn standard_webhooks_accepts_signed_and_rejects_the_rest() {
    let host = host().await;
    let body = fixture("seed-format/sms.received.json");
    let now = Utc::now().timestamp();

    let (status, resp) = host
        .post("sw", body.clone(), &sw_headers("msg_1", now, body.as_bytes(), SW_SECRET))
        .await;
    assert_eq!(status, 202, "{resp}");

    // Same webhook-id again (a retry): acknowledged, not stored twice.
    let (status, resp) = host
        .post("sw", body.clone(), &sw_headers("msg_1", now, body.as_bytes(), SW_SECRET))
        .await;
    assert_eq!((status, resp["status"].as_str()), (200, Some("duplicate")));

    let mut tampered: Value = serde_json::from_str(&body).unwrap();
    tampered["data"]["body"] = "tampered".into();
    let signed_for_original = sw_headers("msg_2", now, body.as_bytes(), SW_SECRET);
    let (status, resp) = host.post("sw", tampered.to_string(), &signed_for_original).await;
    assert_eq!(
        (status, resp["error"].as_str()),
        (401, Some("unauthorized: signature does not match"))
    );

    for sig in ["v1,", "v1,!!!", "v1", ""] {
        let headers = vec![
            (SW_ID, "msg_3".to_string()),
            (SW_TIMESTAMP, now.to_string()),
            (SW_SIGNATURE, sig.to_string()),
        ];
        let (status, resp) = host.post("sw", body.clone(), &headers).await;
        assert_eq!(status, 401, "{sig:?}: {resp}");
    }
    let (status, _) = host
        .post("sw", body.clone(), &sw_headers("msg_4", now - 600, body.as_bytes(), SW_SECRET))
        .await;
    assert_eq!(status, 401, "a timestamp outside ±5 min is refused");
    let (status, _) = host
        .post("sw", body.clone(), &sw_headers("msg_5", now, body.as_bytes(), "whsec_d3Jvbmc="))
        .await;
    assert_eq!(status, 401);
    assert_eq!(host.event_count("sw"), 1);
    assert!(host.healthy().await);
}
