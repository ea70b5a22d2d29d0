//! ListDeviceCredentialClientId end to end: paging by offset and by cursor, deletes while
//! listing, parameters, its own rate limit and its page faults.

use std::collections::HashSet;

use onsmqtt_emulator::{EmulatorSettings, ListPaging, PageFault, Registry};
use serde_json::Value;

use super::common::*;

fn groups(paging: ListPaging, sizes: &[(&str, usize)]) -> EmulatorSettings {
    EmulatorSettings {
        registry: Registry::groups(INSTANCE, sizes.iter().copied()),
        list_paging: paging,
        list_rate_limit: 10_000,
        rate_limit: 10_000,
        ..EmulatorSettings::default()
    }
}

/// The `DeviceCredentialClientIdList` object of a successful answer.
fn page_of(a: &Answer) -> Value {
    assert_eq!(a.status, 200, "{}", a.body);
    assert_request_id(a.json()["RequestId"].as_str().unwrap());
    a.json()["DeviceCredentialClientIdList"].clone()
}

fn ids_of(page: &Value) -> Vec<String> {
    serde_json::from_value(page["ClientIdList"].clone()).unwrap()
}

#[tokio::test]
async fn a_group_of_5000_lists_in_50_offset_pages_with_numbers_as_strings() {
    within(async {
        let settings = groups(ListPaging::Offset, &[("GID_meter", 5000), ("GID_other", 7)]);
        let (emu, http) = start(settings).await;
        let mut seen = HashSet::new();
        for page_no in 1..=50 {
            let page =
                page_of(&v3(&http, &emu, &Call::list("GID_meter", page_no, 100, None)).await);
            assert_eq!(page["PageNo"], page_no.to_string());
            assert_eq!(page["PageSize"], "100");
            assert_eq!(page["Total"], "5000");
            assert!(
                page.get("NextToken").is_none(),
                "offset paging has no token"
            );
            let ids = ids_of(&page);
            assert_eq!(ids.len(), 100);
            for id in ids {
                assert!(id.starts_with("GID_meter@@@dev-"), "{id}");
                assert!(seen.insert(id), "listed twice");
            }
        }
        assert_eq!(seen.len(), 5000);
        let past = page_of(&v3(&http, &emu, &Call::list("GID_meter", 51, 100, None)).await);
        assert!(ids_of(&past).is_empty());
        let unknown = page_of(&v3(&http, &emu, &Call::list("GID_nobody", 1, 100, None)).await);
        assert_eq!(
            (unknown["Total"].as_str(), ids_of(&unknown).len()),
            (Some("0"), 0)
        );
        let stats = emu.stats();
        let list = &stats.by_action["ListDeviceCredentialClientId"];
        assert_eq!((list.calls, list.successes), (52, 52));
        assert_eq!(list.successes_by_instance[INSTANCE], 52);
        assert_eq!(stats.billed_by_instance[INSTANCE], 52);
        assert_eq!(stats.successes, 0, "listing deregisters nothing");
        assert_eq!(emu.group_len(INSTANCE, "GID_meter"), 5000);
    })
    .await;
}

#[tokio::test]
async fn a_cursor_lists_every_id_once_and_ends_with_an_empty_token() {
    within(async {
        let (emu, http) = start(groups(ListPaging::Cursor, &[("GID_meter", 5000)])).await;
        let mut seen = HashSet::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            pages += 1;
            let call = Call::list("GID_meter", pages, 100, token.as_deref());
            // Every other page signed the legacy way, to prove both schemes reach it.
            let answer = if pages % 2 == 0 {
                v2(&http, &emu, &call, false).await
            } else {
                v3(&http, &emu, &call).await
            };
            let page = page_of(&answer);
            seen.extend(ids_of(&page));
            let next = page["NextToken"]
                .as_str()
                .expect("a token, maybe empty")
                .to_string();
            if next.is_empty() {
                break;
            }
            token = Some(next);
        }
        assert_eq!((pages, seen.len()), (50, 5000));
    })
    .await;
}

/// Lists `group` page by page, deregistering each page before asking for the next, the way a
/// careless client would; returns how many ids it saw.
async fn list_while_deleting(paging: ListPaging) -> (usize, usize) {
    let (emu, http) = start(groups(paging, &[("GID_meter", 1000)])).await;
    let mut listed = 0;
    let mut token: Option<String> = None;
    for page_no in 1.. {
        let page = page_of(
            &v3(
                &http,
                &emu,
                &Call::list("GID_meter", page_no, 100, token.as_deref()),
            )
            .await,
        );
        let ids = ids_of(&page);
        if ids.is_empty() {
            break;
        }
        listed += ids.len();
        for id in &ids {
            assert_eq!(v3(&http, &emu, &Call::new(id)).await.status, 200);
        }
        token = page["NextToken"].as_str().map(str::to_string);
        if token.as_deref() == Some("") {
            break;
        }
    }
    (listed, emu.group_len(INSTANCE, "GID_meter"))
}

#[tokio::test]
async fn deleting_while_listing_skips_devices_by_offset_but_not_by_cursor() {
    within(async {
        let (listed, left) = list_while_deleting(ListPaging::Offset).await;
        assert_eq!((listed, left), (500, 500), "every other page was skipped");
        let (listed, left) = list_while_deleting(ListPaging::Cursor).await;
        assert_eq!((listed, left), (1000, 0));
    })
    .await;
}

#[tokio::test]
async fn listing_parameters_are_checked_like_the_gateway() {
    within(async {
        let (emu, http) = start(groups(ListPaging::Cursor, &[("GID_meter", 3)])).await;
        let code = |a: Answer| (a.status, a.code());
        let missing = Call::action(
            "ListDeviceCredentialClientId",
            &[
                ("InstanceId", INSTANCE),
                ("PageNo", "1"),
                ("PageSize", "10"),
            ],
        );
        assert_eq!(
            code(v3(&http, &emu, &missing).await),
            (400, "MissingGroupId".into())
        );
        let too_big = Call::list("GID_meter", 1, 101, None);
        assert_eq!(
            code(v3(&http, &emu, &too_big).await),
            (400, "InvalidParameter.PageSize".into())
        );
        let zero = Call::list("GID_meter", 0, 10, None);
        assert_eq!(
            code(v3(&http, &emu, &zero).await),
            (400, "InvalidParameter.PageNo".into())
        );
        let bad_group = Call::list("meter", 1, 10, None);
        assert_eq!(
            code(v3(&http, &emu, &bad_group).await),
            (400, "InvalidParameter.GroupId".into())
        );
        let forged = Call::list("GID_meter", 2, 10, Some("not-a-token"));
        assert_eq!(
            code(v3(&http, &emu, &forged).await),
            (400, "InvalidParameter.NextToken".into())
        );
        // A short last page by cursor: all three and an empty token at once.
        let page = page_of(&v3(&http, &emu, &Call::list("GID_meter", 1, 10, None)).await);
        assert_eq!(
            (ids_of(&page).len(), page["NextToken"].as_str()),
            (3, Some(""))
        );
        // A page exactly as long as the rest still ends there.
        let page = page_of(&v3(&http, &emu, &Call::list("GID_meter", 1, 3, None)).await);
        assert_eq!(page["NextToken"], "");
    })
    .await;
}

#[tokio::test]
async fn the_listing_has_its_own_per_account_rate_limit() {
    within(async {
        let settings = EmulatorSettings {
            list_rate_limit: 3,
            rate_limit: 100,
            retry_after_ms: Some(100),
            registry: Registry::groups(INSTANCE, [("GID_meter", 5)]),
            ..EmulatorSettings::default()
        };
        let (emu, http) = start(settings).await;
        let calls = (0..5).map(|_| {
            let (http, emu) = (http.clone(), &emu);
            async move { v3(&http, emu, &Call::list("GID_meter", 1, 10, None)).await }
        });
        let answers = futures_util::future::join_all(calls).await;
        let throttled: Vec<_> = answers.iter().filter(|a| a.status != 200).collect();
        assert_eq!(throttled.len(), 2);
        for t in throttled {
            assert_eq!((t.status, t.code().as_str()), (400, "Throttling.User"));
            assert_eq!(t.headers["x-acs-retry-after"], "100");
        }
        // UnRegister's budget is untouched by the listing's.
        assert_eq!(
            v3(&http, &emu, &Call::new("GID_meter@@@dev-0"))
                .await
                .status,
            200
        );
        let stats = emu.stats();
        let list = &stats.by_action["ListDeviceCredentialClientId"];
        assert_eq!((list.accepted, list.throttled), (3, 2));
        assert_eq!(list.max_accepted_per_sliding_second, 3);
        assert_eq!(
            stats.max_accepted_per_sliding_second, 4,
            "account-wide, all actions"
        );
    })
    .await;
}

#[tokio::test]
async fn a_listing_page_fails_always_or_a_few_times_after_authentication() {
    within(async {
        let settings = EmulatorSettings {
            list_page_faults: vec![
                "7:InvalidParameter.GroupId".parse::<PageFault>().unwrap(),
                "3:InternalError:1".parse().unwrap(),
            ],
            ..groups(ListPaging::Offset, &[("GID_meter", 1000)])
        };
        let (emu, http) = start(settings).await;
        for _ in 0..2 {
            let a = v3(&http, &emu, &Call::list("GID_meter", 7, 100, None)).await;
            assert_eq!(
                (a.status, a.code().as_str()),
                (400, "InvalidParameter.GroupId")
            );
        }
        let first = v3(&http, &emu, &Call::list("GID_meter", 3, 100, None)).await;
        assert_eq!(
            (first.status, first.code().as_str()),
            (500, "InternalError")
        );
        let retried = v3(&http, &emu, &Call::list("GID_meter", 3, 100, None)).await;
        assert_eq!(ids_of(&page_of(&retried)).len(), 100);
        let wrong = v3(
            &http,
            &emu,
            &Call::list("GID_meter", 7, 100, None).secret("nope"),
        )
        .await;
        assert_eq!(wrong.code(), "SignatureDoesNotMatch");
        assert_eq!(
            page_of(&v3(&http, &emu, &Call::list("GID_meter", 6, 100, None)).await)["Total"],
            "1000"
        );
        assert_eq!(emu.stats().faults_injected.list_page, 3);
    })
    .await;
}

#[tokio::test]
async fn total_can_be_a_number_and_a_registration_shows_in_the_next_listing() {
    within(async {
        let settings = EmulatorSettings {
            list_total_as_number: true,
            ..groups(ListPaging::Offset, &[("GID_meter", 2)])
        };
        let (emu, http) = start(settings).await;
        let page = page_of(&v3(&http, &emu, &Call::list("GID_meter", 1, 100, None)).await);
        assert_eq!(page["Total"], 2);
        assert!(emu.register(INSTANCE, "GID_meter@@@late"));
        assert!(!emu.register(INSTANCE, "GID_meter@@@late"));
        let page = page_of(&v3(&http, &emu, &Call::list("GID_meter", 1, 100, None)).await);
        assert_eq!(page["Total"], 3);
        assert!(ids_of(&page).contains(&"GID_meter@@@late".to_string()));
    })
    .await;
}
