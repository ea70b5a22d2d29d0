//! A job: one (instance, ClientId) pair to deregister, and the input rules it must pass before any
//! call is made (API.md): a job that fails them is `rejected`, never sent.

use serde::Serialize;

/// Job status vocabulary, exactly as stored in `jobs.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Running,
    Succeeded,
    NotFound,
    Failed,
    Rejected,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Pending,
        Status::Running,
        Status::Succeeded,
        Status::NotFound,
        Status::Failed,
        Status::Rejected,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::NotFound => "not_found",
            Status::Failed => "failed",
            Status::Rejected => "rejected",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// True for the statuses a job never leaves by itself.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Pending | Status::Running)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job claimed by this process.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub instance_id: String,
    pub client_id: String,
    pub run: String,
    /// Calls already made for this job (before this one).
    pub attempts: i64,
    /// Why the row cannot be a job at all (a column of the wrong type, such as a BLOB inserted
    /// by hand): the job is rejected with this reason, never sent.
    pub malformed: Option<String>,
}

impl Job {
    /// Whether this job may be sent: its row is well-formed and its ids pass [`check`].
    pub fn verdict(&self) -> Result<(), String> {
        match &self.malformed {
            Some(reason) => Err(reason.clone()),
            None => check(&self.instance_id, &self.client_id),
        }
    }
}

/// A text column of `jobs` as deregd reads it back outside the claim. The table is open to
/// hand-written SQL, so a column may hold a BLOB: it is read as its SQL literal (`X'FF00'`),
/// and text that is not UTF-8 with U+FFFD in place of its bad bytes (see [`lossy`]), rather
/// than failing the command that reads it.
pub(crate) fn shown(column: &str) -> String {
    format!("iif(typeof({column}) = 'blob', quote({column}), {column})")
}

/// Text from a column's bytes, U+FFFD in place of bytes that are not UTF-8.
pub(crate) fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Longest ClientId the API accepts, characters.
pub const MAX_CLIENT_ID_LEN: usize = 64;
/// Longest InstanceId we accept, characters.
pub const MAX_INSTANCE_ID_LEN: usize = 64;

/// Checks an InstanceId: 1-64 of `A-Z a-z 0-9 - _`.
pub fn check_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("InstanceId is empty".into());
    }
    if id.chars().count() > MAX_INSTANCE_ID_LEN {
        return Err(format!(
            "InstanceId is {} characters long; at most {MAX_INSTANCE_ID_LEN}",
            id.chars().count()
        ));
    }
    if let Some(c) = id.chars().find(|c| !is_id_char(*c)) {
        return Err(format!(
            "InstanceId contains {}; only letters, digits, '-' and '_' are allowed",
            describe(c)
        ));
    }
    Ok(())
}

/// Checks a ClientId: `<GroupId>@@@<DeviceId>`, at most 64 characters of `A-Z a-z 0-9 - _`
/// plus the one `@@@`; the GroupId is 7-64 characters and starts with `GID_` or `GID-`.
pub fn check_client_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("ClientId is empty".into());
    }
    let len = id.chars().count();
    if len > MAX_CLIENT_ID_LEN {
        return Err(format!(
            "ClientId is {len} characters long; at most {MAX_CLIENT_ID_LEN}"
        ));
    }
    let Some((group, device)) = id.split_once("@@@") else {
        return Err("ClientId has no '@@@' between GroupId and DeviceId".into());
    };
    for part in [group, device] {
        if let Some(c) = part.chars().find(|c| !is_id_char(*c)) {
            return Err(format!(
                "ClientId contains {}; only letters, digits, '-', '_' and one '@@@' are allowed",
                describe(c)
            ));
        }
    }
    if !(group.starts_with("GID_") || group.starts_with("GID-")) {
        return Err("GroupId must start with 'GID_' or 'GID-'".into());
    }
    if group.len() < 7 {
        return Err(format!(
            "GroupId '{group}' is {} characters long; at least 7",
            group.len()
        ));
    }
    if device.is_empty() {
        return Err("DeviceId after '@@@' is empty".into());
    }
    Ok(())
}

/// Checks a GroupId: 7-64 of `A-Z a-z 0-9 - _`, starting with `GID_` or `GID-`.
pub fn check_group_id(group: &str) -> Result<(), String> {
    if let Some(c) = group.chars().find(|c| !is_id_char(*c)) {
        return Err(format!(
            "GroupId contains {}; only letters, digits, '-' and '_' are allowed",
            describe(c)
        ));
    }
    if !(group.starts_with("GID_") || group.starts_with("GID-")) {
        return Err("GroupId must start with 'GID_' or 'GID-'".into());
    }
    if !(7..=64).contains(&group.len()) {
        return Err(format!(
            "GroupId '{group}' is {} characters long; 7 to 64",
            group.len()
        ));
    }
    Ok(())
}

/// Checks both ids of a job; the reason goes into `last_message` of a rejected job.
pub fn check(instance_id: &str, client_id: &str) -> Result<(), String> {
    check_instance_id(instance_id)?;
    check_client_id(client_id)
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

fn describe(c: char) -> String {
    if c.is_control() {
        format!("a control character (U+{:04X})", c as u32)
    } else if c == ' ' {
        "a space".into()
    } else if c.is_whitespace() {
        format!("white space (U+{:04X})", c as u32)
    } else {
        format!("{c:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_ids_pass() {
        assert_eq!(check("post-cn-0pp12gl0001", "GID_fleet@@@dev-1"), Ok(()));
        assert_eq!(check("mqtt-cn-0pp1ldu0001", "GID-abc@@@x"), Ok(()));
        let longest = format!("GID_{}@@@{}", "a".repeat(30), "b".repeat(27));
        assert_eq!(longest.len(), 64);
        assert_eq!(check_client_id(&longest), Ok(()));
    }

    #[test]
    fn malformed_client_ids_are_refused_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("   ", "no '@@@'"),
            ("GID_fleet@@@", "DeviceId"),
            ("GID_fleetdev-1", "no '@@@'"),
            ("GRP_fleet@@@dev", "start with"),
            ("GID_ab@@@dev", "at least 7"),
            ("GID_fleet@@@dev 1", "a space"),
            ("GID_fleet@@@dev\u{1}", "control character"),
            ("GID_fleet@@@dév", "'é'"),
            ("GID_fleet@@@a%2F", "'%'"),
            ("GID_fleet@@@a/b", "'/'"),
            ("GID_fleet@@@a:b", "':'"),
            ("GID_fleet@@@a@@@b", "'@'"),
            ("GID_x'; DROP TABLE jobs;--@@@d", "'\\''"),
        ];
        for (id, needle) in cases {
            let err = check_client_id(id).expect_err(id);
            assert!(err.contains(needle), "{id:?}: {err}");
        }
        let long = format!("GID_fleet@@@{}", "d".repeat(60));
        assert!(check_client_id(&long).unwrap_err().contains("at most 64"));
        let huge = "x".repeat(1 << 20);
        assert!(check_client_id(&huge).unwrap_err().contains("at most 64"));
    }

    #[test]
    fn group_ids_follow_the_api_rules() {
        assert_eq!(check_group_id("GID_meter_v1"), Ok(()));
        assert!(check_group_id("GID_ab").unwrap_err().contains("7 to 64"));
        assert!(check_group_id("GRP_meter")
            .unwrap_err()
            .contains("start with"));
        assert!(check_group_id("GID_a@@@b").unwrap_err().contains("'@'"));
        assert!(check_group_id(&format!("GID_{}", "a".repeat(61))).is_err());
    }

    #[test]
    fn malformed_instance_ids_are_refused() {
        assert!(check_instance_id("").is_err());
        assert!(check_instance_id(" ").unwrap_err().contains("space"));
        assert!(check_instance_id("post-cn-0pp12gl****").is_err());
        assert!(check_instance_id(&"a".repeat(65)).is_err());
    }

    #[test]
    fn status_names_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("done"), None);
    }
}
