//! The vendor's registry of device credentials, through its List and Get actions: a group's
//! whole listing, page by page, and whether one credential still exists. Every call is paced
//! under its action's and its source address's budgets (and its instance's cap), retried on
//! transient answers with the retry settings' backoff, and every success is billed in
//! `tps_usage` with its action.

use crate::action::Action;
use crate::api::http::StampedEmpty;
use crate::api::registry::{self, PAGE_SIZE};
use crate::api::ApiClient;
use crate::clock::now_ms;
use crate::config::{RetrySettings, Settings};
use crate::outcome::{classify, classify_withheld, Outcome};
use crate::pacing::{Ceilings, Pacer};
use crate::store::{tps_usage, Store};

/// Most pages one listing follows: a gateway that never ends a listing is cut short there.
const MAX_PAGES: u64 = 200_000;

/// Why a call of the registry did not give an answer to use.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// An answer that retrying cannot change (a permanent or pause-class code).
    #[error("{code}: {message}{}", hint.map(|h| format!(" ({h})")).unwrap_or_default())]
    Refused {
        code: String,
        message: String,
        hint: Option<&'static str>,
    },
    #[error("{attempts} calls failed, the last with {code}: {message}")]
    RetriesSpent {
        attempts: u32,
        code: String,
        message: String,
    },
    #[error("{0}")]
    Malformed(String),
    #[error("cannot record the billed calls: {0}")]
    Store(#[from] sqlx::Error),
}

/// Why a listing stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ListError {
    #[error("listing page {page} of {group}: {error}")]
    Call {
        group: String,
        page: u64,
        error: CallError,
    },
    #[error("the listing of {group} holds {client_id}, which is not in that group")]
    ForeignId { group: String, client_id: String },
    #[error("listing {group}: more than {MAX_PAGES} pages")]
    Endless { group: String },
    #[error(transparent)]
    Sink(#[from] anyhow::Error),
}

impl From<CallError> for ListError {
    /// A call's failure outside any page (recording its billing).
    fn from(e: CallError) -> ListError {
        ListError::Sink(e.into())
    }
}

/// Calls of the registry, paced and billed.
pub(crate) struct Registry<'s> {
    client: ApiClient,
    pacer: Pacer,
    retry: RetrySettings,
    store: &'s Store,
}

impl<'s> Registry<'s> {
    pub(crate) fn new(settings: &Settings, client: ApiClient, store: &'s Store) -> Registry<'s> {
        let ceilings = Ceilings::from_limits(&settings.limits, client.sources());
        Registry {
            client,
            pacer: Pacer::new(&ceilings),
            retry: settings.retry.clone(),
            store,
        }
    }

    /// One call of `action` on `instance`, retried while transient. `Ok(Some(body))` for a
    /// success, `Ok(None)` for `DeviceCredentialNotFound`.
    async fn call(
        &mut self,
        action: Action,
        instance: &str,
        params: &[(&str, &str)],
    ) -> Result<Option<bytes::Bytes>, CallError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let permit = self.pacer.until_ready(action, instance).await;
            let answer = self
                .client
                .call(
                    action,
                    permit.route.source,
                    params,
                    StampedEmpty::paced(permit.ticket),
                )
                .await;
            let judged = judge(
                self.client.credentials(),
                &mut self.pacer,
                &self.retry,
                action,
                &permit.route,
                attempt,
                answer,
            );
            self.bill(action, instance, judged.billed).await?;
            match judged.verdict {
                Verdict::Done(done) => return done,
                Verdict::Again(delay) => tokio::time::sleep(delay).await,
            }
        }
    }

    /// Calls of one action, up to [`CONCURRENT`] in flight, each paced and retried as
    /// [`Registry::call`] does; `each` gets every call's key and result as it comes, in no
    /// particular order, and stops the lot by returning an error.
    async fn call_many<K: Copy, E: From<CallError>>(
        &mut self,
        action: Action,
        requests: Vec<Request<K>>,
        mut each: impl AsyncFnMut(K, Result<Option<bytes::Bytes>, CallError>) -> Result<(), E>,
    ) -> Result<(), E> {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let Registry {
            client,
            pacer,
            retry,
            store,
        } = self;
        let client = &*client;
        // (index into requests, attempt, not before).
        let mut queue: std::collections::VecDeque<(usize, u32, tokio::time::Instant)> = (0
            ..requests.len())
            .map(|i| (i, 1, tokio::time::Instant::now()))
            .collect();
        let mut in_flight = FuturesUnordered::new();
        loop {
            // The calls in flight are polled while the next waits for its place: each is
            // stamped in the send window only when its request is written.
            let now = tokio::time::Instant::now();
            let next = queue.front().copied();
            let ready = next.filter(|(_, _, at)| *at <= now && in_flight.len() < CONCURRENT);
            let due = next.map_or(now + FAR, |(_, _, at)| at.max(now));
            if in_flight.is_empty() && next.is_none() {
                return Ok(());
            }
            let done = tokio::select! {
                biased;
                done = in_flight.next(), if !in_flight.is_empty() => done.expect("not empty"),
                permit = pacer.until_ready(action, ready.map_or("", |(i, _, _)| requests[i].instance.as_str())),
                    if ready.is_some() =>
                {
                    let (i, attempt, _) = queue.pop_front().expect("ready");
                    let request = &requests[i];
                    in_flight.push(async move {
                        let params: Vec<(&str, &str)> = request
                            .params
                            .iter()
                            .map(|(k, v)| (*k, v.as_str()))
                            .collect();
                        let answer = client
                            .call(
                                action,
                                permit.route.source,
                                &params,
                                StampedEmpty::paced(permit.ticket),
                            )
                            .await;
                        (i, attempt, permit.route, answer)
                    });
                    continue;
                }
                _ = tokio::time::sleep_until(due), if ready.is_none() && in_flight.len() < CONCURRENT => continue,
            };
            let (i, attempt, route, answer) = done;
            let judged = judge(
                client.credentials(),
                pacer,
                retry,
                action,
                &route,
                attempt,
                answer,
            );
            bill(store, action, &requests[i].instance, judged.billed).await?;
            match judged.verdict {
                Verdict::Done(done) => each(requests[i].key, done).await?,
                Verdict::Again(delay) => {
                    // Retries go to the back, sorted by when they are due.
                    let at = tokio::time::Instant::now() + delay;
                    let pos = queue.partition_point(|(_, _, due)| *due <= at);
                    queue.insert(pos, (i, attempt + 1, at));
                }
            }
        }
    }

    async fn bill(&self, action: Action, instance: &str, billed: bool) -> Result<(), CallError> {
        bill(self.store, action, instance, billed).await
    }

    /// Lists every ClientId of `group` on `instance`, handing each page's ids to `each`.
    /// Follows `NextToken` when the answers carry one, otherwise pages by number until a short
    /// page or `Total`: once the first page gives the `Total`, the pages up to it are asked
    /// for side by side (up to [`CONCURRENT`] in flight, within the listing's budget), and
    /// paging goes on one by one after them while pages come back full. Every id must be of
    /// `group`. Returns how many ids were listed.
    pub(crate) async fn list_group(
        &mut self,
        instance: &str,
        group: &str,
        mut each: impl AsyncFnMut(Vec<String>) -> anyhow::Result<()>,
    ) -> Result<u64, ListError> {
        let mut listing = Listing {
            group,
            prefix: format!("{group}@@@"),
            listed: 0,
        };
        let (mut token, mut page_no) = (None::<String>, 1u64);
        while page_no <= MAX_PAGES {
            let params = page_params(instance, group, page_no, token.as_deref());
            let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let answer = self.call(Action::List, instance, &params).await;
            let page = listing.take(page_no, answer, &mut each).await?;
            let short = page.got < u64::from(PAGE_SIZE);
            let all = page.total.is_some_and(|total| listing.listed >= total);
            token = page.next_token;
            if token.is_none() && (short || all) {
                return Ok(listing.listed);
            }
            page_no += 1;
            // Numbered paging with a known Total: the pages up to it side by side.
            if let (None, Some(total), 2) = (&token, page.total, page_no) {
                let last = total.div_ceil(u64::from(PAGE_SIZE)).min(MAX_PAGES);
                if last >= page_no {
                    let requests = (page_no..=last)
                        .map(|n| Request {
                            key: n,
                            instance: instance.to_string(),
                            params: page_params(instance, group, n, None),
                        })
                        .collect();
                    let mut last_full = false;
                    self.call_many(Action::List, requests, async |n, answer| {
                        let page = listing.take(n, answer, &mut each).await?;
                        if n == last {
                            last_full = page.got >= u64::from(PAGE_SIZE);
                        }
                        Ok::<(), ListError>(())
                    })
                    .await?;
                    if !last_full {
                        return Ok(listing.listed);
                    }
                    // Registered while listing: go on one page at a time.
                    page_no = last + 1;
                }
            }
        }
        Err(ListError::Endless {
            group: group.to_string(),
        })
    }

    /// Which of `pairs` (instance, client) still exist, asked side by side (up to
    /// [`CONCURRENT`] in flight, within the Get budget); `found` gets each answer as it comes.
    pub(crate) async fn exist_many(
        &mut self,
        pairs: &[(String, String)],
        mut found: impl FnMut(usize, bool),
    ) -> Result<(), CallError> {
        let requests = pairs
            .iter()
            .enumerate()
            .map(|(key, (instance, client))| Request {
                key,
                instance: instance.clone(),
                params: vec![
                    ("ClientId", client.clone()),
                    ("InstanceId", instance.clone()),
                ],
            })
            .collect();
        self.call_many(Action::Get, requests, async |key, answer| {
            found(key, credential_of(answer?, &pairs[key].1)?);
            Ok::<(), CallError>(())
        })
        .await
    }
}

/// Calls in flight at once in [`Registry::call_many`]: enough for 499 calls/s at 30 ms.
const CONCURRENT: usize = 16;
/// A wait longer than any retry's.
const FAR: std::time::Duration = std::time::Duration::from_secs(3600);

/// One call of [`Registry::call_many`].
struct Request<K> {
    key: K,
    instance: String,
    params: Vec<(&'static str, String)>,
}

fn page_params(
    instance: &str,
    group: &str,
    page_no: u64,
    token: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut params = vec![
        ("GroupId", group.to_string()),
        ("InstanceId", instance.to_string()),
        ("PageNo", page_no.to_string()),
        ("PageSize", PAGE_SIZE.to_string()),
    ];
    if let Some(t) = token {
        params.push(("NextToken", t.to_string()));
    }
    params
}

/// A listing in progress: its group and what it has listed so far.
struct Listing<'g> {
    group: &'g str,
    prefix: String,
    listed: u64,
}

/// What one page held, beyond its ids.
struct PageSeen {
    got: u64,
    next_token: Option<String>,
    total: Option<u64>,
}

impl Listing<'_> {
    /// Checks page `page_no`'s answer and hands its ids on.
    async fn take(
        &mut self,
        page_no: u64,
        answer: Result<Option<bytes::Bytes>, CallError>,
        each: &mut impl AsyncFnMut(Vec<String>) -> anyhow::Result<()>,
    ) -> Result<PageSeen, ListError> {
        let fail = |error| ListError::Call {
            group: self.group.to_string(),
            page: page_no,
            error,
        };
        let body = answer.map_err(fail)?.unwrap_or_default();
        let page = registry::parse_page(&body).map_err(|e| fail(CallError::Malformed(e)))?;
        if let Some(foreign) = page
            .client_ids
            .iter()
            .find(|c| !c.starts_with(&self.prefix))
        {
            return Err(ListError::ForeignId {
                group: self.group.to_string(),
                client_id: foreign.clone(),
            });
        }
        let got = page.client_ids.len() as u64;
        self.listed += got;
        if got > 0 {
            each(page.client_ids).await?;
        }
        Ok(PageSeen {
            got,
            next_token: page.next_token,
            total: page.total,
        })
    }
}

/// Whether a Get answer (`None`: not found) is of `client`.
fn credential_of(body: Option<bytes::Bytes>, client: &str) -> Result<bool, CallError> {
    let Some(body) = body else {
        return Ok(false);
    };
    let found = registry::parse_credential(&body).map_err(CallError::Malformed)?;
    if found != client {
        return Err(CallError::Malformed(format!(
            "asked for {client}, the answer is of {found}"
        )));
    }
    Ok(true)
}

/// Records a billed call in `tps_usage`.
async fn bill(
    store: &Store,
    action: Action,
    instance: &str,
    billed: bool,
) -> Result<(), CallError> {
    if billed {
        let second = now_ms().div_euclid(1000);
        let tally = tps_usage::tally(action, [(instance, second)].into_iter());
        tps_usage::record(store, &tally).await?;
    }
    Ok(())
}

/// What to make of one answer.
struct Judged {
    billed: bool,
    verdict: Verdict,
}

enum Verdict {
    /// The call's result.
    Done(Result<Option<bytes::Bytes>, CallError>),
    /// Transient: try again after this.
    Again(std::time::Duration),
}

/// Classifies one answer (Get's without its body), tells the pacer, and decides: a result, or
/// another try after a backoff while `retry.max_attempts` allows.
fn judge(
    credentials: &crate::credentials::Provider,
    pacer: &mut Pacer,
    retry: &RetrySettings,
    action: Action,
    route: &crate::pacing::Route,
    attempt: u32,
    answer: Result<crate::api::Answer, crate::api::http::TransportError>,
) -> Judged {
    let classified = match action {
        Action::Get => classify_withheld(&answer),
        _ => classify(&answer),
    };
    let verdict = match classified.outcome {
        Outcome::Succeeded { .. } => {
            pacer.on_accepted(route);
            Verdict::Done(Ok(answer.ok().map(|a| a.body)))
        }
        Outcome::NotFound { .. } => {
            pacer.on_accepted(route);
            Verdict::Done(Ok(None))
        }
        Outcome::Retry {
            code,
            message,
            pressure,
            retry_after,
            ..
        } => {
            if let Some(pressure) = pressure {
                if let Some(rate) = pacer.on_pressure(route, pressure, retry_after) {
                    tracing::warn!(api.action = action.name(), api.code = %code,
                        pacing.rate = format!("{rate:.1}"), "throttled: slowing down");
                }
            }
            if attempt >= retry.max_attempts {
                Verdict::Done(Err(CallError::RetriesSpent {
                    attempts: attempt,
                    code,
                    message,
                }))
            } else {
                let mut delay = crate::retry::delay_after(retry, i64::from(attempt));
                if let Some(after) = retry_after {
                    delay = delay.max(after);
                }
                tracing::debug!(api.action = action.name(), api.code = %code,
                    retry.in_ms = delay.as_millis() as u64, "retrying");
                Verdict::Again(delay)
            }
        }
        Outcome::Permanent { code, message, .. } => {
            pacer.on_accepted(route);
            Verdict::Done(Err(CallError::Refused {
                code,
                message,
                hint: None,
            }))
        }
        // Renewable credentials are renewed at once and the call tried again; fixed ones
        // cannot be, and the call's answer stands.
        Outcome::StaleCredentials { code, message, .. } => {
            if credentials.refused(credentials.current().generation) {
                tracing::info!(api.action = action.name(), api.code = %code,
                    "the API refused the credentials; renewing them, the call is made again");
                Verdict::Again(retry.base_delay)
            } else {
                Verdict::Done(Err(CallError::Refused {
                    code,
                    message,
                    hint: Some(crate::outcome::STALE_CREDENTIALS_HINT),
                }))
            }
        }
        Outcome::Pause {
            code,
            message,
            hint,
            ..
        } => Verdict::Done(Err(CallError::Refused {
            code,
            message,
            hint: Some(hint),
        })),
    };
    Judged {
        billed: classified.billed,
        verdict,
    }
}
