//! Bulk submission: parsing an operator's list (one ClientId a line, or CSV with an
//! `instance_id,client_id` header), validating each line with the worker's own rules
//! ([`crate::job::check`]), and handing the valid pairs to [`crate::store::submit`] chunk by
//! chunk while the next chunk is parsed.

use crate::job;
use crate::store::submit::{Inserted, Submission, CHUNK_ROWS};
use crate::store::Store;

/// The header that turns the input into CSV.
pub(crate) const CSV_HEADER: &str = "instance_id,client_id";

/// A line that was not queued, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Rejection {
    /// 1-based line number in the input.
    pub line: usize,
    pub reason: String,
}

/// The input could not be read as a job list at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InputError {
    #[error(
        "no InstanceId: pass --instance ID, or give CSV input whose first line is `{CSV_HEADER}`"
    )]
    NoInstance,
}

/// What parsing found besides the pairs themselves.
#[derive(Debug, Default)]
pub(crate) struct ParseSummary {
    /// Valid lines that repeated an earlier line of the same input.
    pub duplicates_in_input: u64,
    pub rejections: Vec<Rejection>,
    /// True when the input had the CSV header.
    pub csv: bool,
}

/// True when `line` is the CSV header (`instance_id,client_id`, any case, fields optionally
/// quoted, surrounding blanks ignored).
pub(crate) fn is_csv_header(line: &str) -> bool {
    let mut fields = line.trim().split(',').map(unquote);
    matches!(
        (fields.next(), fields.next(), fields.next()),
        (Some(a), Some(b), None)
            if a.eq_ignore_ascii_case("instance_id") && b.eq_ignore_ascii_case("client_id")
    )
}

/// Fails fast, before anything is opened or queued, when the input cannot be read as a job list:
/// plain input (no CSV header on its first line) without `--instance`.
pub(crate) fn check_input(input: &[u8], instance: Option<&str>) -> Result<(), InputError> {
    if instance.is_some() {
        return Ok(());
    }
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let first = input
        .split(|b| *b == b'\n')
        .filter_map(|raw| std::str::from_utf8(raw).ok())
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'));
    match first {
        Some(line) if is_csv_header(line) => Ok(()),
        _ => Err(InputError::NoInstance),
    }
}

/// Parses and validates an input, handing its valid, distinct pairs to `emit` in input order,
/// `chunk_rows` at a time (the last chunk may be shorter; an input without valid pairs emits
/// nothing). Blank lines and lines starting with `#` are skipped. `instance` is the
/// `--instance` value: required for plain input; for CSV input, when given, rows naming another
/// instance are rejected (a guard against the wrong file). `emit` returns false to stop early.
pub(crate) fn parse_chunks<'a>(
    input: &'a [u8],
    instance: Option<&'a str>,
    chunk_rows: usize,
    mut emit: impl FnMut(Vec<(&'a str, &'a str)>) -> bool,
) -> Result<ParseSummary, InputError> {
    check_input(input, instance)?;
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let mut summary = ParseSummary::default();
    // FxHash: SipHash's flood resistance buys nothing for an operator's own file, and a
    // million lookups in it were a tenth of a bulk submission's time.
    let mut seen: rustc_hash::FxHashSet<(&str, &str)> =
        rustc_hash::FxHashSet::with_capacity_and_hasher(input.len() / 32, Default::default());
    let chunk_capacity = chunk_rows.min(input.len() / 16 + 1);
    let mut chunk = Vec::with_capacity(chunk_capacity);
    let mut header_checked = false;
    for (index, raw) in input.split(|b| *b == b'\n').enumerate() {
        let number = index + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = match std::str::from_utf8(raw) {
            Ok(line) => line,
            Err(_) => {
                summary.rejections.push(Rejection {
                    line: number,
                    reason: "line is not valid UTF-8".into(),
                });
                continue;
            }
        };
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if !header_checked {
            header_checked = true;
            if is_csv_header(trimmed) {
                summary.csv = true;
                continue;
            }
        }
        let pair = if summary.csv {
            csv_pair(line, instance)
        } else {
            Ok((instance.expect("check_input passed"), line))
        };
        let checked = pair.and_then(|(i, c)| job::check(i, c).map(|()| (i, c)));
        match checked {
            Ok(pair) => {
                if !seen.insert(pair) {
                    summary.duplicates_in_input += 1;
                    continue;
                }
                chunk.push(pair);
                if chunk.len() >= chunk_rows
                    && !emit(std::mem::replace(
                        &mut chunk,
                        Vec::with_capacity(chunk_capacity),
                    ))
                {
                    return Ok(summary);
                }
            }
            Err(reason) => summary.rejections.push(Rejection {
                line: number,
                reason,
            }),
        }
    }
    if !chunk.is_empty() {
        emit(chunk);
    }
    Ok(summary)
}

/// Splits one CSV data line. Valid ids contain neither commas nor quotes, so a full CSV parser
/// buys nothing here: a line that needs one is rejected anyway.
fn csv_pair<'a>(line: &'a str, instance: Option<&str>) -> Result<(&'a str, &'a str), String> {
    let mut fields = line.split(',');
    let (Some(i), Some(c), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(format!(
            "expected 2 fields ({CSV_HEADER}), found {}",
            line.split(',').count()
        ));
    };
    let (i, c) = (unquote(i), unquote(c));
    if let Some(expected) = instance {
        if i != expected {
            return Err(format!(
                "InstanceId {i:?} is not the --instance given ({expected:?})"
            ));
        }
    }
    Ok((i, c))
}

fn unquote(field: &str) -> &str {
    field
        .strip_prefix('"')
        .and_then(|f| f.strip_suffix('"'))
        .unwrap_or(field)
}

/// What [`submit_input`] did.
#[derive(Debug, Default)]
pub(crate) struct Submitted {
    pub inserted: Inserted,
    pub parse: ParseSummary,
}

/// Why [`submit_input`] stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SubmitError {
    #[error(transparent)]
    Input(#[from] InputError),
    /// The database failed; the chunks committed before it stay queued.
    #[error("cannot queue the jobs: {0}")]
    Database(#[from] sqlx::Error),
}

/// Parses, validates and queues a whole input (see [`parse_chunks`] and [`Submission`]),
/// parsing on a blocking thread while the previous chunk is being inserted: on two cores that
/// hides the parse (a fifth of the work) behind SQLite. The input is `'static` because the
/// parser thread borrows it while this future runs.
pub(crate) async fn submit_input(
    db: &Store,
    input: &'static [u8],
    instance: Option<&'static str>,
    run: &str,
) -> Result<Submitted, SubmitError> {
    let (chunks_tx, mut chunks_rx) = tokio::sync::mpsc::channel(1);
    let parser = tokio::task::spawn_blocking(move || {
        parse_chunks(input, instance, CHUNK_ROWS, |chunk| {
            chunks_tx.blocking_send(chunk).is_ok()
        })
    });
    let mut submission = Submission::begin(db, run).await?;
    while let Some(chunk) = chunks_rx.recv().await {
        submission.add(&chunk).await?;
    }
    let parse = parser.await.expect("the parser does not panic")?;
    Ok(Submitted {
        inserted: submission.inserted,
        parse,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The valid, distinct pairs of an input, borrowed from it, in input order.
    #[derive(Debug, Default)]
    struct Parsed<'a> {
        pairs: Vec<(&'a str, &'a str)>,
        /// Valid lines that repeated an earlier line of the same input.
        duplicates_in_input: u64,
        rejections: Vec<Rejection>,
        /// True when the input had the CSV header.
        csv: bool,
    }

    /// Parses and validates a whole input at once; see [`parse_chunks`].
    fn parse<'a>(input: &'a [u8], instance: Option<&'a str>) -> Result<Parsed<'a>, InputError> {
        let mut pairs = Vec::new();
        let summary = parse_chunks(input, instance, usize::MAX, |chunk| {
            pairs = chunk;
            true
        })?;
        Ok(Parsed {
            pairs,
            duplicates_in_input: summary.duplicates_in_input,
            rejections: summary.rejections,
            csv: summary.csv,
        })
    }

    #[test]
    fn the_csv_header_is_recognised_in_its_usual_spellings() {
        assert!(is_csv_header("instance_id,client_id"));
        assert!(is_csv_header("Instance_Id,Client_Id \r"));
        assert!(is_csv_header("\"instance_id\",\"client_id\""));
        assert!(!is_csv_header("instance_id,client_id,run"));
        assert!(!is_csv_header("GID_fleet@@@dev-1"));
        assert!(!is_csv_header("instance_id"));
    }

    #[test]
    fn plain_input_needs_an_instance() {
        assert_eq!(
            parse(b"GID_fleet@@@a\n", None).unwrap_err(),
            InputError::NoInstance
        );
        assert_eq!(parse(b"", None).unwrap_err(), InputError::NoInstance);
    }

    #[test]
    fn plain_lines_are_validated_deduplicated_and_numbered() {
        let input =
            b"# fleet A\nGID_fleet@@@a\r\n\nGID_fleet@@@b\nbad id\nGID_fleet@@@a\n  # note\n";
        let parsed = parse(input, Some("post-cn-1")).unwrap();
        assert_eq!(
            parsed.pairs,
            [
                ("post-cn-1", "GID_fleet@@@a"),
                ("post-cn-1", "GID_fleet@@@b")
            ]
        );
        assert_eq!(parsed.duplicates_in_input, 1);
        assert_eq!(parsed.rejections.len(), 1);
        assert_eq!(parsed.rejections[0].line, 5);
        assert!(!parsed.csv);
    }

    #[test]
    fn csv_rows_carry_their_own_instance() {
        let input = "\u{feff}instance_id,client_id\npost-cn-1,GID_fleet@@@a\n\"post-cn-2\",\"GID_fleet@@@a\"\npost-cn-1,GID_fleet@@@a,extra\npost-cn-1\n";
        let parsed = parse(input.as_bytes(), None).unwrap();
        assert!(parsed.csv);
        assert_eq!(
            parsed.pairs,
            [
                ("post-cn-1", "GID_fleet@@@a"),
                ("post-cn-2", "GID_fleet@@@a")
            ]
        );
        let lines: Vec<usize> = parsed.rejections.iter().map(|r| r.line).collect();
        assert_eq!(lines, [4, 5]);
        assert!(parsed.rejections[0].reason.contains("found 3"));
    }

    #[test]
    fn csv_rows_of_another_instance_are_refused_when_one_is_named() {
        let input = b"instance_id,client_id\npost-cn-1,GID_fleet@@@a\npost-cn-2,GID_fleet@@@b\n";
        let parsed = parse(input, Some("post-cn-1")).unwrap();
        assert_eq!(parsed.pairs.len(), 1);
        assert_eq!(parsed.rejections[0].line, 3);
        assert!(parsed.rejections[0].reason.contains("--instance"));
    }

    #[test]
    fn chunks_hold_the_distinct_valid_pairs_in_order_and_stop_when_asked() {
        let input = b"GID_fleet@@@1\nGID_fleet@@@2\nGID_fleet@@@1\nbad id\nGID_fleet@@@3\nGID_fleet@@@4\nGID_fleet@@@5\n";
        let mut chunks = Vec::new();
        let summary = parse_chunks(input, Some("post-cn-1"), 2, |chunk| {
            chunks.push(chunk.iter().map(|(_, c)| c.to_string()).collect::<Vec<_>>());
            true
        })
        .unwrap();
        assert_eq!(
            chunks,
            [
                vec!["GID_fleet@@@1", "GID_fleet@@@2"],
                vec!["GID_fleet@@@3", "GID_fleet@@@4"],
                vec!["GID_fleet@@@5"]
            ]
        );
        assert_eq!(summary.duplicates_in_input, 1);
        assert_eq!(summary.rejections[0].line, 4);

        let mut calls = 0;
        parse_chunks(input, Some("post-cn-1"), 2, |_| {
            calls += 1;
            false
        })
        .unwrap();
        assert_eq!(calls, 1);
    }

    #[test]
    fn the_input_check_looks_only_at_the_first_meaningful_line() {
        assert!(check_input(b"# ids\n\ninstance_id,client_id\n", None).is_ok());
        assert!(check_input(b"\xEF\xBB\xBFinstance_id,client_id\n", None).is_ok());
        assert!(check_input(b"# ids\nGID_fleet@@@1\n", None).is_err());
        assert!(check_input(b"GID_fleet@@@1\n", Some("post-cn-1")).is_ok());
    }

    #[test]
    fn invalid_utf8_lines_are_rejected_not_fatal() {
        let parsed = parse(b"GID_fleet@@@a\nGID_fleet@@@\xff\n", Some("post-cn-1")).unwrap();
        assert_eq!(parsed.pairs.len(), 1);
        assert_eq!(parsed.rejections[0].line, 2);
    }
}
