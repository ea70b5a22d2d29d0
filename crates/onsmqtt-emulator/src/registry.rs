//! Which device credentials exist, keyed by `(InstanceId, ClientId)`, and what each one is.
//!
//! Invariant: a credential is registered when an explicit entry holds it or the base rule does
//! (open: "every well-formed id"; closed: wildcard ids); deregistering removes it from both.
//! Explicit entries are kept per `(instance, GroupId)` in an [`IdSet`], so they can be listed.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

use super::idset::IdSet;

/// Which device credentials exist, and which were removed by this emulator.
///
/// The base rule is either "everything well-formed is registered" (minus an optional
/// never-registered set) or "only what is listed". On top of it sit explicit entries, pinned to
/// an instance and grouped by GroupId (the part of the ClientId before `@@@`): those are what
/// `ListDeviceCredentialClientId` lists. In the open ("everything") mode a listing therefore
/// shows only what was registered explicitly ([`Registry::with_group`], [`Registry::register`]).
/// A wildcard entry of a registry file (no instance) models a device whose instance the
/// operator did not write down: the first successful call on any instance removes it; it is
/// never listed.
#[derive(Debug, Clone)]
pub struct Registry {
    base: Base,
    /// Explicit entries: instance → GroupId → ClientIds.
    groups: HashMap<String, HashMap<String, IdSet>>,
    /// When registered at run time (not seeded): instance → ClientId → its own data.
    registered: HashMap<String, HashMap<String, Issued>>,
    /// Key of the derived secrets of seeded and implicit credentials (random per registry).
    secret_key: [u8; 32],
    /// When the registry was made, unix milliseconds: the CreateTime of seeded credentials.
    created_ms: u64,
}

#[derive(Debug, Clone)]
enum Base {
    Open {
        never_pairs: HashSet<(String, String)>,
        never_clients: HashSet<String>,
        removed: HashSet<(String, String)>,
    },
    Closed {
        any_instance: HashSet<String>,
    },
}

impl Base {
    /// Whether the open base rule says `(instance, client)` was never registered.
    fn never(&self, instance: &str, client: &str) -> bool {
        match self {
            Base::Open {
                never_pairs,
                never_clients,
                ..
            } => {
                never_clients.contains(client)
                    || never_pairs.contains(&(instance.to_string(), client.to_string()))
            }
            Base::Closed { .. } => false,
        }
    }
}

/// The data of a credential registered at run time.
#[derive(Debug, Clone)]
struct Issued {
    secret: String,
    created_ms: u64,
}

/// One device's access credential, as `GetDeviceCredential` answers it. `Debug` redacts the
/// secret.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceCredential {
    /// The ClientId.
    pub client_id: String,
    /// The InstanceId.
    pub instance_id: String,
    /// The device's AccessKeyId.
    pub access_key_id: String,
    /// The device's AccessKeySecret (random per credential, never logged).
    pub access_key_secret: String,
    /// When it was created, unix milliseconds.
    pub create_time_ms: u64,
    /// When it was last updated, unix milliseconds.
    pub update_time_ms: u64,
}

impl std::fmt::Debug for DeviceCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCredential")
            .field("client_id", &self.client_id)
            .field("instance_id", &self.instance_id)
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"<redacted>")
            .field("create_time_ms", &self.create_time_ms)
            .finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::everything()
    }
}

/// The GroupId of `client`: the part before `@@@`, or all of it when there is none.
pub(crate) fn group_of(client: &str) -> &str {
    client.split_once("@@@").map_or(client, |(g, _)| g)
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `len` characters of `[A-Za-z0-9]`, chosen by `bytes`.
fn alphanumeric(bytes: &[u8], len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    bytes
        .iter()
        .cycle()
        .take(len)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

impl Registry {
    fn with_base(base: Base) -> Registry {
        Registry {
            base,
            groups: HashMap::new(),
            registered: HashMap::new(),
            secret_key: rand::thread_rng().gen(),
            created_ms: now_ms(),
        }
    }

    /// Every well-formed `(InstanceId, ClientId)` starts registered.
    pub fn everything() -> Registry {
        Registry::all_except(Vec::<(String, String)>::new())
    }

    /// Everything registered except these `(InstanceId, ClientId)` pairs, which answer
    /// `DeviceCredentialNotFound` from the first call.
    pub fn all_except<I, S>(never_registered: I) -> Registry
    where
        I: IntoIterator<Item = (S, S)>,
        S: Into<String>,
    {
        Registry::with_base(Base::Open {
            never_pairs: never_registered
                .into_iter()
                .map(|(i, c)| (i.into(), c.into()))
                .collect(),
            never_clients: HashSet::new(),
            removed: HashSet::new(),
        })
    }

    /// Everything registered except these ClientIds, on every instance.
    pub fn all_except_clients<I, S>(never_registered: I) -> Registry
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Registry::with_base(Base::Open {
            never_pairs: HashSet::new(),
            never_clients: never_registered.into_iter().map(Into::into).collect(),
            removed: HashSet::new(),
        })
    }

    /// Only these entries are registered: `(Some(instance), client)` on that instance (and
    /// listed in its group), `(None, client)` on any instance (removed by the first success
    /// anywhere, never listed).
    pub fn only<I>(entries: I) -> Registry
    where
        I: IntoIterator<Item = (Option<String>, String)>,
    {
        let mut any_instance = HashSet::new();
        let mut pinned: HashMap<String, HashMap<String, Vec<Box<str>>>> = HashMap::new();
        for (instance, client) in entries {
            match instance {
                Some(i) => pinned
                    .entry(i)
                    .or_default()
                    .entry(group_of(&client).to_string())
                    .or_default()
                    .push(client.into()),
                None => {
                    any_instance.insert(client);
                }
            }
        }
        let mut registry = Registry::with_base(Base::Closed { any_instance });
        registry.groups = pinned
            .into_iter()
            .map(|(i, groups)| {
                let sets = groups
                    .into_iter()
                    .map(|(g, ids)| (g, IdSet::from_unsorted(ids)))
                    .collect();
                (i, sets)
            })
            .collect();
        registry
    }

    /// Only these groups are registered on `instance`: for each `(GroupId, count)`, the
    /// ClientIds `GroupId@@@dev-0` .. `GroupId@@@dev-<count - 1>`.
    pub fn groups<I, S>(instance: &str, groups: I) -> Registry
    where
        I: IntoIterator<Item = (S, usize)>,
        S: AsRef<str>,
    {
        groups.into_iter().fold(Registry::only([]), |r, (g, n)| {
            r.with_group(instance, g.as_ref(), n)
        })
    }

    /// Adds the explicit, listable entries `group@@@dev-0` .. `group@@@dev-<count - 1>` on
    /// `instance` (to any mode, "everything" included).
    pub fn with_group(self, instance: &str, group: &str, count: usize) -> Registry {
        self.with_clients(instance, (0..count).map(|i| format!("{group}@@@dev-{i}")))
    }

    /// Adds these explicit, listable ClientIds on `instance`.
    pub fn with_clients<I, S>(mut self, instance: &str, clients: I) -> Registry
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut by_group: HashMap<String, Vec<Box<str>>> = HashMap::new();
        for client in clients {
            let client: String = client.into();
            by_group
                .entry(group_of(&client).to_string())
                .or_default()
                .push(client.into());
        }
        let sets = self.groups.entry(instance.to_string()).or_default();
        for (group, mut ids) in by_group {
            if let Some(old) = sets.remove(&group) {
                ids.extend(old.iter().map(Into::into));
            }
            sets.insert(group, IdSet::from_unsorted(ids));
        }
        self
    }

    /// Parses a registry file: one `ClientId` or `InstanceId ClientId` per line; blank lines
    /// and `#` comments are ignored.
    pub fn parse(text: &str) -> anyhow::Result<Registry> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [client] => entries.push((None, client.to_string())),
                [instance, client] => {
                    entries.push((Some(instance.to_string()), client.to_string()))
                }
                _ => bail!(
                    "registry line {}: expected `ClientId` or `InstanceId ClientId`, got {} fields",
                    n + 1,
                    fields.len()
                ),
            }
        }
        Ok(Registry::only(entries))
    }

    /// Reads and parses a registry file (see [`Registry::parse`]).
    pub fn from_file(path: &Path) -> anyhow::Result<Registry> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading registry file {}", path.display()))?;
        Registry::parse(&text).with_context(|| format!("parsing registry file {}", path.display()))
    }

    fn explicit(&self, instance: &str, client: &str) -> bool {
        self.group(instance, group_of(client))
            .is_some_and(|set| set.contains(client))
    }

    /// The explicit ClientIds of `(instance, group)`, if it has any.
    pub(crate) fn group(&self, instance: &str, group: &str) -> Option<&IdSet> {
        self.groups.get(instance)?.get(group)
    }

    /// Number of listable credentials of `(instance, group)`.
    pub fn group_len(&self, instance: &str, group: &str) -> usize {
        self.group(instance, group).map_or(0, IdSet::len)
    }

    /// Whether `(instance, client)` is currently registered.
    pub fn is_registered(&self, instance: &str, client: &str) -> bool {
        if self.explicit(instance, client) {
            return true;
        }
        match &self.base {
            Base::Open { removed, .. } => {
                !self.base.never(instance, client)
                    && !removed.contains(&(instance.to_string(), client.to_string()))
            }
            Base::Closed { any_instance } => any_instance.contains(client),
        }
    }

    /// Removes `(instance, client)`; returns whether it was registered.
    pub fn deregister(&mut self, instance: &str, client: &str) -> bool {
        let explicit = self
            .groups
            .get_mut(instance)
            .and_then(|g| g.get_mut(group_of(client)))
            .is_some_and(|set| set.remove(client));
        if let Some(own) = self.registered.get_mut(instance) {
            own.remove(client);
        }
        let never = self.base.never(instance, client);
        match &mut self.base {
            Base::Open { removed, .. } => {
                // Both sides change: the implicit credential goes as well as the explicit one.
                let implicit = !never && removed.insert((instance.to_string(), client.to_string()));
                explicit || implicit
            }
            Base::Closed { any_instance } => explicit || any_instance.remove(client),
        }
    }

    /// Registers `(instance, client)` as an explicit, listable entry with a fresh secret;
    /// returns `false` (and changes nothing) when it is registered already.
    pub fn register(&mut self, instance: &str, client: &str) -> bool {
        if self.is_registered(instance, client) {
            return false;
        }
        self.groups
            .entry(instance.to_string())
            .or_default()
            .entry(group_of(client).to_string())
            .or_default()
            .insert(client);
        let secret = alphanumeric(&rand::thread_rng().gen::<[u8; 32]>(), 30);
        self.registered
            .entry(instance.to_string())
            .or_default()
            .insert(
                client.to_string(),
                Issued {
                    secret,
                    created_ms: now_ms(),
                },
            );
        true
    }

    /// The credential of `(instance, client)` if it is registered.
    pub fn credential(&self, instance: &str, client: &str) -> Option<DeviceCredential> {
        if !self.is_registered(instance, client) {
            return None;
        }
        let derive = |purpose: &[u8]| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret_key).expect("any key");
            for part in [purpose, instance.as_bytes(), client.as_bytes()] {
                mac.update(part);
                mac.update(b"\0");
            }
            mac.finalize().into_bytes()
        };
        let own = self.registered.get(instance).and_then(|m| m.get(client));
        let (secret, created_ms) = match own {
            Some(o) => (o.secret.clone(), o.created_ms),
            None => (alphanumeric(&derive(b"secret"), 30), self.created_ms),
        };
        let key_id = alphanumeric(&derive(b"key id"), 24);
        Some(DeviceCredential {
            client_id: client.to_string(),
            instance_id: instance.to_string(),
            access_key_id: key_id,
            access_key_secret: secret,
            create_time_ms: created_ms,
            update_time_ms: created_ms,
        })
    }

    /// Entries still registered, or `None` when the registry is open-ended.
    pub fn remaining(&self) -> Option<u64> {
        match &self.base {
            Base::Open { .. } => None,
            Base::Closed { any_instance } => {
                let explicit: usize = self.groups.values().flatten().map(|(_, s)| s.len()).sum();
                Some((explicit + any_instance.len()) as u64)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_registry_removes_once_and_honours_never_registered() {
        let mut r = Registry::all_except(vec![("inst", "GID_never@@@x")]);
        assert!(r.is_registered("inst", "GID_test@@@a"));
        assert!(r.deregister("inst", "GID_test@@@a"));
        assert!(!r.deregister("inst", "GID_test@@@a"));
        assert!(r.deregister("other", "GID_test@@@a"));
        assert!(!r.deregister("inst", "GID_never@@@x"));
        assert!(r.deregister("other", "GID_never@@@x"));
        assert_eq!(r.remaining(), None);
        let mut c = Registry::all_except_clients(["GID_never@@@x"]);
        assert!(!c.deregister("any", "GID_never@@@x"));
    }

    #[test]
    fn registry_file_parses_pinned_and_wildcard_lines() {
        let mut r = Registry::parse(
            "# devices\n\nGID_a@@@1\n  mqtt-1  GID_b@@@2  # trailing\nmqtt-2 GID_c@@@3\n",
        )
        .unwrap();
        assert_eq!(r.remaining(), Some(3));
        assert_eq!(
            r.group_len("mqtt-1", "GID_b"),
            1,
            "pinned lines are listable"
        );
        assert!(!r.deregister("mqtt-2", "GID_b@@@2"));
        assert!(r.deregister("mqtt-1", "GID_b@@@2"));
        assert!(r.deregister("whatever", "GID_a@@@1"));
        assert!(!r.deregister("mqtt-1", "GID_a@@@1"));
        assert_eq!(r.remaining(), Some(1));
        let err = Registry::parse("a b c\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn seeded_groups_are_listable_and_removed_one_by_one() {
        let mut r = Registry::groups("i", [("GID_meter", 3), ("GID_other", 2)]);
        assert_eq!(r.remaining(), Some(5));
        assert_eq!(r.group_len("i", "GID_meter"), 3);
        assert!(r.is_registered("i", "GID_meter@@@dev-2"));
        assert!(!r.is_registered("i", "GID_meter@@@dev-3"));
        assert!(!r.is_registered("j", "GID_meter@@@dev-0"));
        assert!(r.deregister("i", "GID_meter@@@dev-0"));
        assert!(!r.deregister("i", "GID_meter@@@dev-0"));
        assert_eq!(r.group_len("i", "GID_meter"), 2);
        assert_eq!(r.group_len("i", "GID_other"), 2);
    }

    #[test]
    fn in_the_open_mode_only_explicit_entries_are_listed_and_removal_holds() {
        let mut r = Registry::everything().with_group("i", "GID_meter", 2);
        assert!(r.is_registered("i", "GID_meter@@@dev-9"), "implicit");
        assert_eq!(r.group_len("i", "GID_meter"), 2);
        assert!(r.deregister("i", "GID_meter@@@dev-1"));
        assert!(!r.is_registered("i", "GID_meter@@@dev-1"));
        assert_eq!(r.group_len("i", "GID_meter"), 1);
        assert!(!r.register("i", "GID_meter@@@dev-0"), "exists already");
        assert!(
            r.register("i", "GID_meter@@@dev-1"),
            "registered again after removal"
        );
        assert_eq!(r.group_len("i", "GID_meter"), 2);
        assert!(r.deregister("i", "GID_meter@@@dev-1"));
        assert!(!r.is_registered("i", "GID_meter@@@dev-1"));
    }

    #[test]
    fn secrets_are_stable_per_credential_distinct_and_new_on_registering_again() {
        let mut r = Registry::groups("i", [("GID_meter", 2)]);
        let a = r.credential("i", "GID_meter@@@dev-0").unwrap();
        let b = r.credential("i", "GID_meter@@@dev-1").unwrap();
        assert_eq!(a, r.credential("i", "GID_meter@@@dev-0").unwrap());
        assert_ne!(a.access_key_secret, b.access_key_secret);
        assert_eq!(a.access_key_secret.len(), 30);
        assert!(!format!("{a:?}").contains(&a.access_key_secret));
        let other = Registry::groups("i", [("GID_meter", 1)]);
        let c = other.credential("i", "GID_meter@@@dev-0").unwrap();
        assert_ne!(
            a.access_key_secret, c.access_key_secret,
            "random per registry"
        );
        assert!(r.deregister("i", "GID_meter@@@dev-0"));
        assert_eq!(r.credential("i", "GID_meter@@@dev-0"), None);
        assert!(r.register("i", "GID_meter@@@dev-0"));
        let again = r.credential("i", "GID_meter@@@dev-0").unwrap();
        assert_ne!(again.access_key_secret, a.access_key_secret);
        assert!(again.create_time_ms >= a.create_time_ms);
    }

    #[test]
    fn a_million_credentials_fit_in_one_group() {
        let t0 = std::time::Instant::now();
        let r = Registry::groups("i", [("GID_big", 1_000_000)]);
        assert_eq!(r.group_len("i", "GID_big"), 1_000_000);
        assert!(r.is_registered("i", "GID_big@@@dev-999999"));
        let page = r.group("i", "GID_big").unwrap().page_at(999_950, 100);
        assert_eq!(page.len(), 50);
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "{:?}",
            t0.elapsed()
        );
    }
}
