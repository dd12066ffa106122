//! Tamper evidence for the recordings.
//!
//! * Each event's hash chains to the previous event of its session:
//!   `e[0] = H("session" ‖ id)`, `e[n] = H(e[n-1] ‖ seq ‖ at ‖ kind ‖ data)`, over the bytes as
//!   stored. The last one is the session's *head*.
//! * Each closed session is appended to its node's ledger:
//!   `l[n] = H(l[n-1] ‖ node ‖ n ‖ id ‖ digest(session row) ‖ head ‖ event count)`.
//! * The ledger head is signed with the node's Ed25519 key (`STATE_DIR/audit.key`) in the same
//!   transaction that appends to it (a *head checkpoint*); a copy of the signed head is kept in
//!   `STATE_DIR/ledger-head.json`, outside the store, so a store rolled back or truncated as a
//!   whole is still caught. Retention prunes a prefix of the ledger and leaves a signed *prune
//!   checkpoint* that the remaining chain starts from.
//!
//! `audit verify` ([`verify`]) recomputes every chain and signature and names each session that
//! was altered, reordered, truncated or deleted.

use std::{
    collections::HashMap,
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::session::Session;

pub type Hash = [u8; 32];

pub use crate::hex;

pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hash_of(text: &str) -> Option<Hash> {
    unhex(text)?.try_into().ok()
}

/// Whether `text` is the (lowercase) hex of `hash`, without allocating.
fn hex_is(hash: &Hash, text: &str) -> bool {
    text.len() == hash.len() * 2
        && hash
            .iter()
            .zip(text.as_bytes().chunks_exact(2))
            .all(|(&b, pair)| pair == crate::hex_pair(b))
}

/// The hash a session's event chain starts from.
pub fn session_genesis(id: &str) -> Hash {
    let mut h = Sha256::new();
    h.update(b"react-gateway/session/v1\0");
    h.update(id.as_bytes());
    h.finalize().into()
}

/// Chains one event (as stored: `at`, `kind` and the JSON text of its data) to `prev`.
pub fn chain_event(prev: &Hash, seq: u64, at: &str, kind: &str, data: &str) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    for part in [at, kind, data] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// Digest of a session row: its contract JSON.
pub fn session_digest(session: &Session) -> Hash {
    // Serialised straight into the hasher (it is an `io::Write`); a plain struct into a
    // writer that cannot fail does not fail.
    let mut hasher = Sha256::new();
    let _ = serde_json::to_writer(&mut hasher, session);
    hasher.finalize().into()
}

/// The hash a node's ledger starts from.
pub fn ledger_genesis(node: &str) -> Hash {
    let mut h = Sha256::new();
    h.update(b"react-gateway/ledger/v1\0");
    h.update(node.as_bytes());
    h.finalize().into()
}

/// One closed session in a node's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub node: String,
    pub seq: u64,
    pub session: String,
    pub ended_at: String,
    pub digest: Hash,
    pub head: Hash,
    pub events: u64,
    pub hash: Hash,
}

pub fn chain_ledger(
    prev: &Hash,
    node: &str,
    seq: u64,
    session: &str,
    digest: &Hash,
    head: &Hash,
    events: u64,
) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update((node.len() as u64).to_be_bytes());
    h.update(node.as_bytes());
    h.update(seq.to_be_bytes());
    h.update((session.len() as u64).to_be_bytes());
    h.update(session.as_bytes());
    h.update(digest);
    h.update(head);
    h.update(events.to_be_bytes());
    h.finalize().into()
}

/// A signed statement about a node's ledger: `head` (the ledger ends at `seq` with `hash`) or
/// `prune` (entries up to `seq` were removed by retention; the chain goes on from `hash`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub node: String,
    pub kind: String,
    pub seq: u64,
    pub hash: String,
    pub at: String,
    pub signature: String,
}

impl Checkpoint {
    fn message(node: &str, kind: &str, seq: u64, hash: &str, at: &str) -> Vec<u8> {
        format!("react-gateway/checkpoint/v1\0{node}\0{kind}\0{seq}\0{hash}\0{at}").into_bytes()
    }

    /// Whether the signature is `public_key`'s.
    pub fn verify(&self, public_key: &[u8]) -> bool {
        let Some(signature) = unhex(&self.signature) else {
            return false;
        };
        let message = Self::message(&self.node, &self.kind, self.seq, &self.hash, &self.at);
        signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
            .verify(&message, &signature)
            .is_ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or create the audit key {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("the audit key {0} is not an Ed25519 PKCS#8 key; restore it from backup")]
    Invalid(PathBuf),
}

/// The node's Ed25519 signing key and the node id derived from it.
pub struct Signer {
    key: Ed25519KeyPair,
    node: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("node", &self.node).finish()
    }
}

impl Signer {
    /// Loads `STATE_DIR/audit.key`, creating it (mode 0600) on first start.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, KeyError> {
        let path = state_dir.join("audit.key");
        let pkcs8 = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = ring::rand::SystemRandom::new();
                let doc = Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| KeyError::Invalid(path.clone()))?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| KeyError::Io(path.clone(), e))?;
                file.write_all(doc.as_ref())
                    .and_then(|()| file.sync_all())
                    .map_err(|e| KeyError::Io(path.clone(), e))?;
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(KeyError::Io(path, e)),
        };
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
            .map_err(|_| KeyError::Invalid(path))?;
        let node = node_id(key.public_key().as_ref());
        Ok(Self { key, node })
    }

    /// Loads an existing key (for `audit verify` and `audit public-key`); `None` if there is
    /// none.
    pub fn load(state_dir: &Path) -> Option<Self> {
        let pkcs8 = fs::read(state_dir.join("audit.key")).ok()?;
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).ok()?;
        let node = node_id(key.public_key().as_ref());
        Some(Self { key, node })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    pub fn checkpoint(&self, kind: &str, seq: u64, hash: &Hash, at: &str) -> Checkpoint {
        let hash = hex(hash);
        let message = Checkpoint::message(&self.node, kind, seq, &hash, at);
        Checkpoint {
            node: self.node.clone(),
            kind: kind.to_string(),
            seq,
            hash,
            at: at.to_string(),
            signature: hex(self.key.sign(&message).as_ref()),
        }
    }
}

/// `HOSTNAME-FINGERPRINT`: readable in a fleet, unique per key.
fn node_id(public_key: &[u8]) -> String {
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    let fingerprint = hex(&Sha256::digest(public_key)[..6]);
    format!("{host}-{fingerprint}")
}

/// The signed ledger head kept outside the store (`STATE_DIR/ledger-head.json`).
pub fn anchor_path(state_dir: &Path) -> PathBuf {
    state_dir.join("ledger-head.json")
}

pub fn write_anchor(path: &Path, checkpoint: &Checkpoint) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec(checkpoint).unwrap_or_default())?;
    fs::rename(tmp, path)
}

pub fn read_anchor(path: &Path) -> Option<Checkpoint> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// One problem `audit verify` found.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    pub node: Option<String>,
    pub session: Option<String>,
    pub problem: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub nodes: usize,
    pub sessions: u64,
    pub open_sessions: u64,
    pub events: u64,
    pub ledger_entries: u64,
    pub findings: Vec<Finding>,
}

impl Report {
    fn find(&mut self, node: Option<&str>, session: Option<&str>, problem: String) {
        self.findings.push(Finding {
            node: node.map(str::to_string),
            session: session.map(str::to_string),
            problem,
        });
    }
}

/// What the ledger says about one session.
struct Claim {
    node: Arc<str>,
    seq: u64,
    digest: Hash,
    head: Hash,
    events: u64,
    seen_row: bool,
    seen_events: u64,
}

/// The ledger of the node being verified.
struct NodeState {
    node: Arc<str>,
    next: u64,
    prev: Hash,
    last: u64,
    head: Option<Checkpoint>,
    anchor: Option<Checkpoint>,
    had_head: bool,
    hashes: HashMap<u64, Hash>,
}

/// A session's events as found in the store.
#[derive(Default)]
struct Found {
    count: u64,
    next_seq: u64,
    hash: Option<Hash>,
    problem: Option<String>,
}

/// Rows `verify` reads; the store streams them in.
pub struct StoredEvent {
    pub session: String,
    pub seq: u64,
    pub at: String,
    pub kind: String,
    pub data: String,
    pub hash: String,
}

/// Incremental verifier: feed it the nodes, checkpoints and ledger first, then the sessions
/// and events in any order, then [`Verifier::finish`].
pub struct Verifier {
    report: Report,
    claims: HashMap<String, Claim>,
    found: HashMap<String, Found>,
    current: Option<(String, Found)>,
    node: Option<NodeState>,
    local: Option<(String, Vec<u8>, Option<Checkpoint>)>,
}

impl Verifier {
    /// `local`: this node's id, public key and anchor file (from the state dir), if any.
    pub fn new(local: Option<(String, Vec<u8>, Option<Checkpoint>)>) -> Self {
        Self {
            report: Report::default(),
            claims: HashMap::new(),
            found: HashMap::new(),
            current: None,
            node: None,
            local,
        }
    }

    /// Starts one node: its registered key and checkpoints; its ledger entries follow in
    /// `seq` order ([`Verifier::ledger_entry`]), then [`Verifier::end_node`].
    pub fn begin_node(&mut self, node: &str, public_key_hex: &str, checkpoints: &[Checkpoint]) {
        self.report.nodes += 1;
        let n = Some(node);
        let mut public_key = unhex(public_key_hex).unwrap_or_default();
        let mut anchor = None;
        if let Some((local, key, local_anchor)) = &self.local
            && local == node
        {
            if *key != public_key {
                self.report.find(
                    n,
                    None,
                    "the node's public key in the store differs from the state dir's key (replaced?)".into(),
                );
                public_key.clone_from(key);
            }
            anchor = local_anchor.clone();
        }
        let report = &mut self.report;
        let mut valid = |c: Option<&Checkpoint>| {
            let c = c?;
            if c.node == node && c.verify(&public_key) {
                Some(c.clone())
            } else {
                report.find(
                    n,
                    None,
                    format!(
                        "{} checkpoint at entry {} has a bad signature",
                        c.kind, c.seq
                    ),
                );
                None
            }
        };
        let prune = valid(checkpoints.iter().find(|c| c.kind == "prune"));
        let head = valid(checkpoints.iter().find(|c| c.kind == "head"));
        let anchor = valid(anchor.as_ref());
        let had_head = checkpoints.iter().any(|c| c.kind == "head");
        let (next, prev) = match &prune {
            Some(c) => (c.seq + 1, hash_of(&c.hash).unwrap_or_default()),
            None => (1, ledger_genesis(node)),
        };
        self.node = Some(NodeState {
            node: Arc::from(node),
            next,
            prev,
            last: next - 1,
            head,
            anchor,
            had_head,
            hashes: HashMap::new(),
        });
    }

    pub fn ledger_entry(&mut self, entry: LedgerEntry) {
        let Some(state) = &mut self.node else {
            return;
        };
        self.report.ledger_entries += 1;
        let n = Some(&*state.node);
        if entry.seq == state.next {
            let expect = chain_ledger(
                &state.prev,
                &state.node,
                entry.seq,
                &entry.session,
                &entry.digest,
                &entry.head,
                entry.events,
            );
            if expect != entry.hash {
                self.report.find(
                    n,
                    Some(&entry.session),
                    format!("ledger entry {} was altered", entry.seq),
                );
            }
        } else if entry.seq > state.next {
            self.report.find(
                n,
                Some(&entry.session),
                format!(
                    "ledger entries {}..{} are missing (deleted) before this session's entry",
                    state.next,
                    entry.seq - 1
                ),
            );
        } else {
            self.report.find(
                n,
                Some(&entry.session),
                format!("ledger entry {} out of order", entry.seq),
            );
        }
        state.prev = entry.hash;
        state.last = entry.seq;
        state.next = entry.seq + 1;
        // Only the hashes checkpoints point at are kept.
        if [&state.head, &state.anchor]
            .iter()
            .any(|c| c.as_ref().is_some_and(|c| c.seq == entry.seq))
        {
            state.hashes.insert(entry.seq, entry.hash);
        }
        self.claims.insert(
            entry.session,
            Claim {
                node: Arc::clone(&state.node),
                seq: entry.seq,
                digest: entry.digest,
                head: entry.head,
                events: entry.events,
                seen_row: false,
                seen_events: 0,
            },
        );
    }

    pub fn end_node(&mut self) {
        let Some(state) = self.node.take() else {
            return;
        };
        let n = Some(&*state.node);
        let last = state.last;
        for (checkpoint, what) in [
            (&state.head, "the signed head"),
            (&state.anchor, "the state dir's signed head"),
        ] {
            let Some(c) = checkpoint else {
                continue;
            };
            if c.seq > last {
                self.report.find(
                    n,
                    None,
                    format!("ledger truncated: {what} is at entry {}, the store's ledger ends at {last}", c.seq),
                );
            } else if state.hashes.get(&c.seq).is_some_and(|h| hex(h) != c.hash) {
                self.report.find(
                    n,
                    None,
                    format!("ledger rewritten: entry {} differs from {what}", c.seq),
                );
            }
        }
        if !state.had_head && last > 0 {
            self.report.find(
                n,
                None,
                "the ledger has no signed head (checkpoint deleted)".into(),
            );
        }
        if let Some(c) = &state.head
            && last > c.seq
        {
            self.report.find(
                n,
                None,
                format!(
                    "ledger entries {}..{last} are not covered by the signed head",
                    c.seq + 1
                ),
            );
        }
    }

    /// One session row of the store.
    pub fn session(&mut self, session: &Session) {
        self.report.sessions += 1;
        match self.claims.get_mut(&session.id) {
            Some(claim) => {
                claim.seen_row = true;
                if session_digest(session) != claim.digest {
                    let node = claim.node.clone();
                    self.report.find(
                        Some(&node),
                        Some(&session.id),
                        "session row altered (differs from its ledger entry)".into(),
                    );
                }
            }
            None if session.ended_at.is_none() => self.report.open_sessions += 1,
            None => self.report.find(
                None,
                Some(&session.id),
                "closed session is not in any ledger (ledger truncated, or the session was inserted)".into(),
            ),
        }
    }

    /// One stored event; events of one session must come in `seq` order.
    pub fn event(&mut self, event: &StoredEvent) {
        self.report.events += 1;
        if self
            .current
            .as_ref()
            .is_none_or(|(id, _)| *id != event.session)
        {
            self.flush();
            let found = self.found.remove(&event.session).unwrap_or_default();
            self.current = Some((event.session.clone(), found));
        }
        let Some((id, found)) = &mut self.current else {
            return;
        };
        let prev = found.hash.unwrap_or_else(|| session_genesis(id));
        let expect = chain_event(&prev, event.seq, &event.at, &event.kind, &event.data);
        if found.problem.is_none() {
            if event.seq != found.next_seq {
                found.problem = Some(format!(
                    "event {} missing (deleted), the chain jumps to {}",
                    found.next_seq, event.seq
                ));
            } else if !hex_is(&expect, &event.hash) {
                found.problem = Some(format!("event {} altered or reordered", event.seq));
            }
        }
        found.count += 1;
        found.next_seq = event.seq + 1;
        found.hash = Some(expect);
    }

    fn flush(&mut self) {
        if let Some((id, found)) = self.current.take() {
            self.found.insert(id, found);
        }
    }

    pub fn finish(mut self) -> Report {
        self.flush();
        let mut claims: Vec<_> = self.claims.into_iter().collect();
        claims.sort_by(|a, b| (&a.1.node, a.1.seq).cmp(&(&b.1.node, b.1.seq)));
        for (id, mut claim) in claims {
            let node = Some(&*claim.node);
            if !claim.seen_row {
                self.report.find(
                    node,
                    Some(&id),
                    format!(
                        "session deleted (ledger entry {}, not in the store)",
                        claim.seq
                    ),
                );
                continue;
            }
            let found = self.found.remove(&id).unwrap_or_default();
            claim.seen_events = found.count;
            let head = found.hash.unwrap_or_else(|| session_genesis(&id));
            if let Some(problem) = found.problem {
                self.report.find(node, Some(&id), problem);
            } else if claim.seen_events < claim.events {
                self.report.find(
                    node,
                    Some(&id),
                    format!(
                        "events truncated: the ledger holds {}, the store {}",
                        claim.events, claim.seen_events
                    ),
                );
            } else if claim.seen_events > claim.events || head != claim.head {
                self.report.find(
                    node,
                    Some(&id),
                    format!(
                        "events added or altered: the ledger holds {}, the store {}",
                        claim.events, claim.seen_events
                    ),
                );
            }
        }
        // Events of sessions without a ledger entry: open sessions (fine) or orphans of a
        // deleted session (then the session itself was already named, or never existed).
        self.report
            .findings
            .sort_by(|a, b| (&a.node, &a.session).cmp(&(&b.node, &b.session)));
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(unhex("00abff"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn checkpoints_verify_only_with_their_key() {
        let dir = std::env::temp_dir().join(format!("rg-audit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let signer = Signer::load_or_create(&dir).unwrap();
        let again = Signer::load_or_create(&dir).unwrap();
        assert_eq!(signer.node(), again.node());
        let c = signer.checkpoint("head", 7, &[1; 32], "2026-11-21T00:00:00.000Z");
        assert!(c.verify(signer.public_key()));
        let mut forged = c.clone();
        forged.seq = 8;
        assert!(!forged.verify(signer.public_key()));
        assert!(!c.verify(&[0; 32]));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn event_chain_depends_on_order_and_content() {
        let g = session_genesis("s");
        let a = chain_event(&g, 0, "t", "k", "{}");
        let b = chain_event(&a, 1, "t", "k", "{\"x\":1}");
        let b2 = chain_event(
            &chain_event(&g, 0, "t", "k", "{\"x\":1}"),
            1,
            "t",
            "k",
            "{}",
        );
        assert_ne!(b, b2);
        assert_ne!(
            chain_event(&g, 0, "t", "k", "{}"),
            chain_event(&g, 0, "t", "kk", "{}")
        );
        // Field boundaries are length-prefixed: moving bytes between fields changes the hash.
        assert_ne!(
            chain_event(&g, 0, "ab", "c", ""),
            chain_event(&g, 0, "a", "bc", "")
        );
    }
}
