//! The `PostgreSQL` data path: a connection sniffed as `PostgreSQL` (not a `tcp` target) is read
//! message by message in both directions instead of being relayed as bytes.
//!
//! * Every statement (`Query`, and `Parse` of the extended protocol) is evaluated against the
//!   rules of its target (`sql_statement`, `sql`): an `approve` rule holds it until a person
//!   decides ([`crate::approval`]); a `block` rule (or a denied approval) refuses it with an
//!   `ErrorResponse` (SQLSTATE `42501`) in the place the server's answer would have taken,
//!   the connection stays usable, and the statement never reaches the server. Request `mask` rules mask the SQL text and the text parameters bound
//!   to it before they leave.
//! * Result rows (`DataRow`) are masked by response `mask` rules: `columns` named whole,
//!   detectors in every text value (text format, or text-like types in binary format);
//!   server errors, notices and `COPY … TO STDOUT` data are masked by the detectors too.
//! * The session records `pg_startup`, each statement (`sql`, masked as the server got it),
//!   each result (`sql_result`: command tag, row count, and at `record = "full"` the rows as
//!   the agent got them, up to `record_body_limit` bytes), server errors (`sql_error`) and
//!   refusals (`blocked`).
//!
//! Refusals keep the connection usable, in order, and with the server's transaction state
//! what a real error would leave: a refused `Query` or `Parse` is sent as a statement the
//! server fails to parse (an unterminated identifier holding a per-session marker), so the
//! server errs where the agent expects an answer (also in pipeline mode, after a `Flush`
//! without `Sync`), aborts the agent's open transaction as any failed statement does (its
//! `COMMIT` then rolls back), skips the rest up to `Sync` after a `Parse`, and its error is
//! replaced by the refusal on the way back.
//!
//! TLS ([`UpstreamTls`]): the upstream leg asks the server for TLS (`SSLRequest`, then rustls
//! under the target's TLS policy, the server's certificate verified), required or preferred
//! as the target says, whatever the agent does; an agent that asks for TLS gets it too,
//! terminated with a leaf of the node CA, so its statements can be read. In passthrough (the
//! default for destinations no target names) an agent's TLS goes end to end, unread.

pub mod wire;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    io,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader, BufWriter},
    sync::watch,
};

use self::wire::{Frame, Malformed};
use crate::{
    approval,
    mask::{MaskContext, Masker},
    policy::{Decision, IdSet, Operation, Policy, RecordLevel, TargetProtocol, TlsMode, Verdict},
    proxy::ProxyContext,
    session::{JsonObject, Record},
    store::Write,
};

/// Largest message read whole; a larger statement is refused, a larger result row is refused
/// only when rows are masked (else it is copied through without being held).
pub const MAX_MESSAGE: usize = 16 << 20;
/// How long the server may take to finish after the agent has gone.
const DRAIN: Duration = Duration::from_secs(5);
/// SQLSTATE of a refusal (`insufficient_privilege`).
const REFUSED: &str = "42501";
/// Refused `Parse`s remembered until the server's error for them comes back.
const MAX_REFUSALS: usize = 64;
/// SQLSTATE of a connection the gateway could not make.
const CONNECTION_FAILURE: &str = "08006";
/// SQLSTATE of a protocol violation.
const PROTOCOL_VIOLATION: &str = "08P01";

/// What the agent's startup asked for.
pub enum Startup {
    /// A session: the startup packet to forward (length included) and its parameters.
    Session {
        packet: Vec<u8>,
        params: Vec<(String, String)>,
    },
    /// An `SSLRequest`, for the caller to answer (`S` or `N`).
    Tls,
    /// A `CancelRequest` for another connection: forwarded as it is.
    Cancel(Vec<u8>),
    /// The agent left before a startup packet.
    End,
}

/// Reads the agent's next startup packet (a `GSSENCRequest` is answered `N`: the gateway
/// does not speak GSSAPI encryption, and libpq then goes on with TLS or clear text).
pub async fn startup<C: AsyncRead + AsyncWrite + Unpin>(client: &mut C) -> Result<Startup, String> {
    for _ in 0..2 {
        let Some(body) = wire::read_startup(client)
            .await
            .map_err(|e| format!("PostgreSQL startup: {e}"))?
        else {
            return Ok(Startup::End);
        };
        let mut packet = u32::try_from(body.len() + 4)
            .unwrap_or(u32::MAX)
            .to_be_bytes()
            .to_vec();
        packet.extend_from_slice(&body);
        match wire::startup_code(&body) {
            Some(wire::GSSENC_REQUEST) if body.len() == 4 => {
                client
                    .write_all(b"N")
                    .await
                    .map_err(|e| format!("PostgreSQL startup: {e}"))?;
            }
            Some(wire::SSL_REQUEST) if body.len() == 4 => return Ok(Startup::Tls),
            Some(wire::CANCEL_REQUEST) if body.len() == 12 => return Ok(Startup::Cancel(packet)),
            Some(code) if code >> 16 == 3 => {
                let params = wire::startup_params(&body).map_err(|e| e.to_string())?;
                return Ok(Startup::Session { packet, params });
            }
            _ => {
                let _ = client
                    .write_all(&wire::fatal_response(
                        PROTOCOL_VIOLATION,
                        "react-gateway: unsupported PostgreSQL frontend protocol",
                    ))
                    .await;
                return Err("unsupported PostgreSQL startup packet".into());
            }
        }
    }
    Err("PostgreSQL startup: too many encryption requests".into())
}

/// What a `PostgreSQL` target's upstream leg does about TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTls {
    /// TLS or nothing (`[target.tls] mode = "intercept"` or `"originate"`).
    Require,
    /// TLS when the server offers it (a `postgres` target without `[target.tls]`).
    Prefer,
    /// Clear text (`mode = "none"`).
    Never,
    /// The agent's own TLS goes end to end, unread, when the server takes it (`mode =
    /// "passthrough"`, and destinations no target names); clear-text agents are read.
    Passthrough,
}

impl UpstreamTls {
    pub fn of(policy: &Policy, target: Option<usize>) -> Self {
        let Some(target) = target.map(|t| &policy.targets[t]) else {
            return Self::Passthrough;
        };
        match target.tls.as_ref().map(|t| t.mode) {
            Some(TlsMode::Intercept | TlsMode::Originate) => Self::Require,
            Some(TlsMode::None) => Self::Never,
            None if target.protocol == TargetProtocol::Postgres => Self::Prefer,
            Some(TlsMode::Passthrough) | None => Self::Passthrough,
        }
    }
}

/// Tells the agent why its session ends (`FATAL`, SQLSTATE `08006`); returns the reason.
pub async fn refuse<C: AsyncWrite + Unpin>(client: &mut C, reason: String) -> String {
    let _ = client
        .write_all(&wire::fatal_response(
            CONNECTION_FAILURE,
            &format!("react-gateway: {reason}"),
        ))
        .await;
    reason
}

/// Asks a server for TLS (`SSLRequest`): whether it agreed (`S`) or not (`N`).
pub async fn request_tls<S: AsyncRead + AsyncWrite + Unpin>(server: &mut S) -> io::Result<bool> {
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&8u32.to_be_bytes());
    request[4..].copy_from_slice(&wire::SSL_REQUEST.to_be_bytes());
    server.write_all(&request).await?;
    let mut answer = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(server, &mut answer).await?;
    match answer[0] {
        b'S' => Ok(true),
        b'N' => Ok(false),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer {other:#04x} to a TLS request"),
        )),
    }
}

/// What a message becomes on its way.
enum Out {
    /// Relayed as it came.
    Same,
    /// These bytes instead (whole messages).
    Bytes(Vec<u8>),
}

impl Out {
    async fn write<W: AsyncWrite + Unpin>(self, w: &mut W, tag: u8, body: &[u8]) -> io::Result<()> {
        match self {
            Self::Same => {
                w.write_all(&wire::header(tag, body.len())).await?;
                w.write_all(body).await
            }
            Self::Bytes(bytes) => w.write_all(&bytes).await,
        }
    }
}

/// What one `PostgreSQL` session did, for its record.
#[derive(Debug, Default)]
pub struct Outcome {
    pub rules: BTreeSet<String>,
    pub blocked: bool,
    /// A held statement was denied (by a person, or by its rule's timeout).
    pub approval_denied: bool,
    pub error: Option<String>,
    pub masked: BTreeMap<String, u64>,
}

struct State {
    /// Refused statements sent as statements the server fails to parse: the marker in the
    /// server's error, and the refusal that replaces that error (in order; at most
    /// [`MAX_REFUSALS`] pending).
    refusals: VecDeque<(String, Vec<u8>)>,
    refused: u64,
    /// Prepared statements' request decisions (statement name → decision), for `Bind`.
    statements: HashMap<Vec<u8>, Decision>,
    columns: Vec<wire::Column>,
    result: Rows,
    mask: MaskContext,
    outcome: Outcome,
    /// What the session has to tell the agent as it ends (a `FATAL` error).
    fatal: Option<Vec<u8>>,
}

/// The rows of the current result, for its `sql_result` event.
#[derive(Default)]
struct Rows {
    count: u64,
    data: Vec<serde_json::Value>,
    bytes: usize,
    complete: bool,
}

/// One `PostgreSQL` session between an agent and its server.
pub struct PgSession {
    pub ctx: Arc<ProxyContext>,
    pub policy: Arc<Policy>,
    pub ids: IdSet,
    pub target: Option<usize>,
    pub session_id: String,
    /// Who called, as the kernel attested it (shown with a statement held for approval).
    caller: crate::session::Identity,
    record: RecordLevel,
    /// The maskers of the recorded SQL text (every request mask rule of the target).
    sql_masks: Vec<Arc<Masker>>,
    /// The response rules acting on result rows, errors and `COPY` data.
    rows: Decision,
    state: Mutex<State>,
}

impl PgSession {
    pub fn new(
        ctx: Arc<ProxyContext>,
        policy: Arc<Policy>,
        ids: IdSet,
        target: Option<usize>,
        session: &crate::session::Session,
    ) -> Self {
        let rows = policy.evaluate(
            ids,
            target,
            &Operation::Row {
                columns: &[],
                values: &[],
            },
        );
        let state = State {
            refusals: VecDeque::new(),
            refused: 0,
            statements: HashMap::new(),
            columns: Vec::new(),
            result: Rows {
                complete: true,
                ..Rows::default()
            },
            mask: MaskContext::new(Arc::clone(&ctx.mask_key)),
            outcome: Outcome::default(),
            fatal: None,
        };
        Self {
            record: policy.record_level(ids, target),
            sql_masks: policy.metadata_masks(ids, target, true),
            rows,
            ctx,
            policy,
            ids,
            target,
            session_id: session.id.clone(),
            caller: session.identity.clone(),
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    /// Records an event written field by field.
    async fn record(&self, kind: &'static str, data: JsonObject) {
        self.write(|| Record::encoded(kind, data.finish())).await;
    }

    async fn event(&self, kind: &'static str, data: serde_json::Value) {
        self.write(|| Record::new(kind, &data)).await;
    }

    async fn write(&self, event: impl FnOnce() -> Record) {
        if self.record == RecordLevel::Off {
            return;
        }
        self.ctx
            .recorder
            .write(Write::Event {
                session: self.session_id.clone(),
                event: event(),
            })
            .await;
    }

    /// Relays the session after its startup packet: returns what it did. `cut` ends it
    /// (daemon shutdown).
    pub async fn serve<C, U>(
        &self,
        client: C,
        upstream: U,
        startup: &[u8],
        params: &[(String, String)],
        cut: &mut watch::Receiver<bool>,
    ) -> Outcome
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let param = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        self.event(
            "pg_startup",
            serde_json::json!({
                "user": param("user"),
                "database": param("database"),
                "application_name": param("application_name"),
            }),
        )
        .await;
        let (cr, cw) = tokio::io::split(client);
        let (ur, uw) = tokio::io::split(upstream);
        let mut cr = BufReader::with_capacity(16 << 10, cr);
        let mut ur = BufReader::with_capacity(16 << 10, ur);
        let mut cw = BufWriter::with_capacity(16 << 10, cw);
        let mut uw = BufWriter::with_capacity(16 << 10, uw);
        let result = async {
            uw.write_all(startup).await?;
            uw.flush().await
        }
        .await
        .map_err(|e| format!("PostgreSQL server: {e}"));
        let result = if let Err(e) = result {
            Err(e)
        } else {
            let front = self.frontend(&mut cr, &mut uw);
            let back = self.backend(&mut ur, &mut cw);
            tokio::pin!(front, back);
            tokio::select! {
                r = &mut front => match r {
                    // The agent has finished: the server's last words still reach it.
                    Ok(()) => tokio::time::timeout(DRAIN, &mut back).await.unwrap_or(Ok(())),
                    Err(e) => Err(e),
                },
                r = &mut back => r,
                _ = async { cut.wait_for(|c| *c).await.is_ok() } => {
                    Err("daemon shutting down".into())
                }
            }
        };
        let fatal = self.lock().fatal.take();
        if let Some(fatal) = fatal {
            let _ = cw.write_all(&fatal).await;
            let _ = cw.flush().await;
            let _ = cw.shutdown().await;
        }
        let (summary, outcome) = {
            let mut state = self.lock();
            let summary = state.mask.summary();
            let masked = state.mask.counts.clone();
            let mut outcome = std::mem::take(&mut state.outcome);
            outcome.masked = masked;
            if outcome.error.is_none() {
                outcome.error = result.err();
            }
            (summary, outcome)
        };
        if let Some(summary) = summary {
            self.event("masking", summary).await;
        }
        outcome
    }

    /// Agent → server.
    async fn frontend<R, W>(&self, cr: &mut BufReader<R>, uw: &mut W) -> Result<(), String>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let agent = |e: io::Error| format!("agent: {e}");
        let server = |e: io::Error| format!("PostgreSQL server: {e}");
        let mut body = Vec::new();
        loop {
            let Some(frame) = wire::read_frame(cr, MAX_MESSAGE, &mut body)
                .await
                .map_err(|e| {
                    if e.kind() == io::ErrorKind::InvalidData {
                        self.fatal(&e.to_string())
                    } else {
                        agent(e)
                    }
                })?
            else {
                let _ = uw.flush().await;
                let _ = uw.shutdown().await;
                return Ok(());
            };
            match frame {
                Frame::Large { tag, len } => {
                    if matches!(tag, b'Q' | b'P' | b'B') {
                        return Err(self.fatal(&format!(
                            "a statement of {len} bytes is over the gateway's limit of {MAX_MESSAGE} bytes; refused"
                        )));
                    }
                    wire::copy_body(cr, uw, tag, len)
                        .await
                        .map_err(|e| format!("relaying to the server: {e}"))?;
                }
                Frame::Whole { tag } => {
                    let handled = self.agent_message(tag, &body);
                    // A statement held for approval waits for a person; an agent that hangs
                    // up meanwhile withdraws it, as an HTTP agent's request is withdrawn.
                    let out = if matches!(tag, b'Q' | b'P') && cr.buffer().is_empty() {
                        tokio::select! {
                            biased;
                            out = handled => out,
                            () = hung_up(cr) => {
                                let _ = uw.shutdown().await;
                                return Ok(());
                            }
                        }
                    } else {
                        handled.await
                    }
                    .map_err(|e| self.fatal(&e.to_string()))?;
                    out.write(uw, tag, &body).await.map_err(server)?;
                    if tag == b'X' {
                        let _ = uw.flush().await;
                        let _ = uw.shutdown().await;
                        return Ok(());
                    }
                }
            }
            if cr.buffer().is_empty() {
                uw.flush().await.map_err(server)?;
            }
        }
    }

    /// A per-session part of refusal markers, so no statement of the agent's can look like
    /// one.
    fn nonce(&self) -> &str {
        let id = self.session_id.as_str();
        &id[id.len().saturating_sub(10)..]
    }

    /// The statement a refused one is sent as: text the server fails to parse (an
    /// unterminated quoted identifier holding a marker of this refusal). Its own error comes
    /// where the agent waits for one (also after a `Flush`), aborts an open transaction as
    /// any failed statement does, and is replaced by `error` on the way back.
    fn poison(&self, error: Vec<u8>) -> String {
        let mut state = self.lock();
        state.refused += 1;
        let marker = format!("rg_refused_{}_{}", state.refused, self.nonce());
        if state.refusals.len() == MAX_REFUSALS {
            state.refusals.pop_front();
        }
        state.refusals.push_back((marker.clone(), error));
        format!("\"{marker}")
    }

    /// The refusal that replaces this server error, if it is the error of a refused statement
    /// (refusals before it were skipped by the server after an earlier error, and go).
    fn refusal(&self, fields: &[(u8, &[u8])]) -> Option<Vec<u8>> {
        let mut state = self.lock();
        if state.refusals.is_empty() {
            return None;
        }
        let message = fields.iter().find(|(code, _)| *code == b'M')?.1;
        let at = state
            .refusals
            .iter()
            .position(|(marker, _)| memchr::memmem::find(message, marker.as_bytes()).is_some())?;
        state.refusals.drain(..at);
        state.refusals.pop_front().map(|(_, refusal)| refusal)
    }

    /// Notes a `FATAL` error for the agent and returns the session's error.
    fn fatal(&self, reason: &str) -> String {
        self.lock().fatal = Some(wire::fatal_response(
            PROTOCOL_VIOLATION,
            &format!("react-gateway: {reason}"),
        ));
        reason.to_string()
    }

    /// One message of the agent: what goes to the server.
    async fn agent_message(&self, tag: u8, body: &[u8]) -> Result<Out, Malformed> {
        let mut out = Vec::new();
        match tag {
            b'Q' => {
                let text = wire::query(body)?;
                let (sent, refusal) = self.statement(text, "simple", None).await;
                match (refusal, sent) {
                    (Some(error), _) => {
                        let poison = self.poison(error);
                        wire::put(&mut out, b'Q', &wire::encode_query(poison.as_bytes()));
                    }
                    (None, Some(masked)) => {
                        wire::put(&mut out, b'Q', &wire::encode_query(&masked));
                    }
                    (None, None) => return Ok(Out::Same),
                }
            }
            b'P' => {
                let parse = wire::parse(body)?;
                let (sent, refusal) = self
                    .statement(parse.query, "extended", Some(parse.name))
                    .await;
                if let Some(error) = refusal {
                    // Named as the refused statement: its `Bind`s fail as they would.
                    let poison = wire::Parse {
                        name: parse.name,
                        query: b"",
                        types: &0i16.to_be_bytes(),
                    }
                    .encode(self.poison(error).as_bytes());
                    wire::put(&mut out, b'P', &poison);
                    return Ok(Out::Bytes(out));
                }
                match sent {
                    Some(masked) => wire::put(&mut out, b'P', &parse.encode(&masked)),
                    None => return Ok(Out::Same),
                }
            }
            b'B' => {
                let mut state = self.lock();
                // Read whole only when its statement has request masks.
                let mut fields = wire::Cursor::new(body);
                let _portal = fields.cstr()?;
                let Some(decision) = state.statements.get(fields.cstr()?).cloned() else {
                    return Ok(Out::Same);
                };
                let bind = wire::bind(body)?;
                match self.mask_params(&bind, &decision, &mut state.mask) {
                    Some(params) => wire::put(&mut out, b'B', &bind.encode(&params)),
                    None => return Ok(Out::Same),
                }
            }
            b'X' => return Ok(Out::Same),
            _ => {
                let mut state = self.lock();
                // `Close` of a prepared statement: its decision goes with it.
                if tag == b'C'
                    && let Some((b'S', name)) = body.split_first()
                {
                    let name = name.split(|&b| b == 0).next().unwrap_or_default();
                    state.statements.remove(name);
                }
                return Ok(Out::Same);
            }
        }
        Ok(Out::Bytes(out))
    }

    /// Evaluates and records one statement. Returns the text to send if masking changed it,
    /// and the refusal to answer with if a rule refused it.
    async fn statement(
        &self,
        text: &[u8],
        protocol: &str,
        name: Option<&[u8]>,
    ) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let sql = String::from_utf8_lossy(text);
        let decision = self
            .policy
            .evaluate(self.ids, self.target, &Operation::Sql { text: &sql });
        let names = self.policy.rule_names(&decision.acting);
        // (rule, reason, whether a `block` rule refused it)
        let refused = match decision.verdict {
            Verdict::Block(rule) => Some((rule, "blocked by policy".to_owned(), true)),
            Verdict::Approve(rule) => self
                .approval(rule, &sql)
                .await
                .err()
                .map(|reason| (rule, format!("approval denied: {reason}"), false)),
            Verdict::Allow => None,
        };
        let (sent, recorded) = {
            let mut state = self.lock();
            state.outcome.rules.extend(names);
            let sent = if refused.is_none() && !decision.masks.is_empty() {
                self.policy
                    .mask_body(&decision, Some("text/plain"), text, &mut state.mask)
            } else {
                None
            };
            let recorded =
                self.recorded_sql(String::from_utf8_lossy(sent.as_deref().unwrap_or(text)));
            if let Some((_, _, blocked)) = &refused {
                state.outcome.blocked |= blocked;
                state.outcome.approval_denied |= !blocked;
            } else if let Some(name) = name {
                // Only what a `Bind` to it must mask is kept.
                if decision.masks.is_empty() {
                    state.statements.remove(name);
                } else {
                    state.statements.insert(name.to_vec(), decision.clone());
                }
            }
            (sent, recorded)
        };
        let statement = name.map(|n| String::from_utf8_lossy(n).into_owned());
        match refused {
            Some((rule, reason, blocked)) => {
                let rule = &self.policy.rules[rule].name;
                if blocked {
                    self.event(
                        "blocked",
                        serde_json::json!({"rule": rule, "sql": recorded, "reason": reason}),
                    )
                    .await;
                }
                let message = format!("react-gateway: {reason} (rule {rule})");
                let detail = format!("session {}", self.session_id);
                (
                    None,
                    Some(wire::error_response(REFUSED, &message, Some(&detail))),
                )
            }
            None => {
                let mut data = JsonObject::new();
                data.field("text", &recorded).field("protocol", protocol);
                if let Some(statement) = statement.filter(|s| !s.is_empty()) {
                    data.field("statement", &statement);
                }
                self.record("sql", data).await;
                (sent, None)
            }
        }
    }

    /// SQL text as the record (and an approver) sees it: masked by every request mask rule
    /// of the target, whatever rule acted on the statement.
    fn recorded_sql(&self, text: std::borrow::Cow<'_, str>) -> String {
        let mut recorded = text.into_owned();
        for masker in &self.sql_masks {
            let mut scratch = MaskContext::new(Arc::clone(&self.ctx.mask_key));
            if let std::borrow::Cow::Owned(m) = masker.mask_text(&recorded, &mut scratch) {
                recorded = m;
            }
        }
        recorded
    }

    /// Holds a statement that `approve` rule `rule` matched until a person decides (or the
    /// rule's timeout denies it) and records the decision. `Err`: the reason it was denied.
    async fn approval(&self, rule: usize, sql: &str) -> Result<(), String> {
        let shown = self.recorded_sql(sql.into());
        let (mut event, decided) = approval::ask(
            &self.ctx.approvals,
            &self.policy.rules[rule],
            &self.session_id,
            self.target.map(|t| self.policy.targets[t].name.as_str()),
            &self.caller,
            shown.clone(),
        )
        .await;
        event["sql"] = shown.into();
        self.event("approval", event).await;
        decided
    }

    /// Masks the text parameters of a `Bind` as its statement's request rules say; `None`
    /// when nothing changed.
    fn mask_params(
        &self,
        bind: &wire::Bind<'_>,
        decision: &Decision,
        ctx: &mut MaskContext,
    ) -> Option<Vec<Option<Vec<u8>>>> {
        let mut changed = false;
        let params = bind
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let p = (*p)?;
                if bind.is_text(i)
                    && let Some(masked) =
                        self.policy.mask_body(decision, Some("text/plain"), p, ctx)
                {
                    changed = true;
                    return Some(masked);
                }
                Some(p.to_vec())
            })
            .collect();
        changed.then_some(params)
    }

    /// Server → agent.
    async fn backend<R, W>(&self, ur: &mut BufReader<R>, cw: &mut W) -> Result<(), String>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let agent = |e: io::Error| format!("agent: {e}");
        let masks_rows = !self.rows.masks.is_empty();
        let mut body = Vec::new();
        loop {
            let Some(frame) = wire::read_frame(ur, MAX_MESSAGE, &mut body)
                .await
                .map_err(|e| format!("PostgreSQL server: {e}"))?
            else {
                let _ = cw.flush().await;
                let _ = cw.shutdown().await;
                return Ok(());
            };
            match frame {
                Frame::Large { tag, len } => {
                    if tag == b'D' && masks_rows {
                        return Err(self.fatal(&format!(
                            "a result row of {len} bytes is over the gateway's limit of {MAX_MESSAGE} bytes for masked rows; the result was cut"
                        )));
                    }
                    if tag == b'D' {
                        let mut state = self.lock();
                        state.result.count += 1;
                        state.result.complete = false;
                    }
                    wire::copy_body(ur, cw, tag, len).await.map_err(agent)?;
                }
                Frame::Whole { tag } => {
                    let out = self
                        .server_message(tag, &body)
                        .await
                        .map_err(|e| format!("PostgreSQL server: {e}"))?;
                    out.write(cw, tag, &body).await.map_err(agent)?;
                }
            }
            if ur.buffer().is_empty() {
                cw.flush().await.map_err(agent)?;
            }
        }
    }

    /// One message of the server: what goes to the agent.
    async fn server_message(&self, tag: u8, body: &[u8]) -> Result<Out, Malformed> {
        let mut out = Vec::new();
        match tag {
            b'T' => {
                let columns = wire::row_description(body)?;
                let mut state = self.lock();
                state.columns = columns;
                state.result = Rows {
                    complete: true,
                    ..Rows::default()
                };
                return Ok(Out::Same);
            }
            b'D' => {
                let values = wire::data_row(body)?;
                let mut state = self.lock();
                let state = &mut *state;
                let masked = if self.rows.masks.is_empty() {
                    None
                } else {
                    self.mask_row(&state.columns, &values, &mut state.mask)
                };
                let shown: Vec<Option<&[u8]>> = match &masked {
                    Some(m) => m.iter().map(|v| v.as_deref()).collect(),
                    None => values,
                };
                state.result.count += 1;
                // The record keeps placeholders; the agent gets this session's originals.
                if self.record == RecordLevel::Full {
                    self.keep_row(&mut state.result, &state.columns, &shown);
                }
                let restored = restore_row(&state.columns, &shown, &state.mask);
                if let Some(row) = restored {
                    let row = row.iter().map(Option::as_deref);
                    wire::put(&mut out, b'D', &wire::encode_data_row(row));
                } else if masked.is_some() {
                    wire::put(&mut out, b'D', &wire::encode_data_row(shown.into_iter()));
                } else {
                    return Ok(Out::Same);
                }
            }
            b'C' => {
                let command = String::from_utf8_lossy(wire::command_tag(body)?);
                let data = {
                    let mut state = self.lock();
                    let rows = std::mem::replace(
                        &mut state.result,
                        Rows {
                            complete: true,
                            ..Rows::default()
                        },
                    );
                    let mut data = JsonObject::new();
                    data.field("command", &command).field("rows", &rows.count);
                    if self.record == RecordLevel::Full && rows.count > 0 {
                        let columns: Vec<&str> =
                            state.columns.iter().map(|c| c.name.as_str()).collect();
                        data.field("columns", &columns)
                            .field("data", &rows.data)
                            .field("data_complete", &rows.complete);
                    }
                    data
                };
                self.record("sql_result", data).await;
                return Ok(Out::Same);
            }
            b'E' | b'N' => {
                let fields = wire::fields(body)?;
                if tag == b'E'
                    && let Some(refusal) = self.refusal(&fields)
                {
                    return Ok(Out::Bytes(refusal));
                }
                let masked: Vec<(u8, Vec<u8>)> = {
                    let mut state = self.lock();
                    fields
                        .iter()
                        .map(|&(code, value)| {
                            let masked = if matches!(code, b'S' | b'V' | b'C') {
                                None
                            } else {
                                self.mask_text(value, &mut state.mask)
                            };
                            (code, masked.unwrap_or_else(|| value.to_vec()))
                        })
                        .collect()
                };
                if tag == b'E' {
                    let field = |c: u8| {
                        masked
                            .iter()
                            .find(|(code, _)| *code == c)
                            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    };
                    self.event(
                        "sql_error",
                        serde_json::json!({"code": field(b'C'), "message": field(b'M'), "detail": field(b'D')}),
                    )
                    .await;
                }
                wire::put(
                    &mut out,
                    tag,
                    &wire::encode_fields(masked.iter().map(|(c, v)| (*c, v.as_slice()))),
                );
            }
            b'd' => {
                let Some(masked) = self.mask_text(body, &mut self.lock().mask) else {
                    return Ok(Out::Same);
                };
                wire::put(&mut out, tag, &masked);
            }
            _ => return Ok(Out::Same),
        }
        Ok(Out::Bytes(out))
    }
}

/// Returns when the agent has closed its side (or its connection failed) with nothing more
/// to read; pends for as long as it has sent more (a pipeline) or is silent.
async fn hung_up<R: AsyncRead + Unpin>(cr: &mut BufReader<R>) {
    match cr.fill_buf().await {
        Ok([]) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// A value's text, if its column carries text: text format, or a text-like type in binary
/// format (`jsonb`'s after its version byte).
fn text_of<'a>(column: &wire::Column, value: &'a [u8]) -> Option<&'a [u8]> {
    match (column.format, column.type_oid) {
        (0, _) => Some(value),
        (_, oid) if wire::text_like(oid) => Some(value),
        (_, wire::JSONB) => value.strip_prefix(&[1]),
        _ => None,
    }
}

/// The inverse of [`text_of`] for a changed text.
fn encode_text(column: &wire::Column, text: Vec<u8>) -> Vec<u8> {
    if column.format != 0 && column.type_oid == wire::JSONB {
        [&[1u8][..], &text].concat()
    } else {
        text
    }
}

/// Puts this session's `tokenize` originals back into a row's text values (text format, or
/// text-like types in binary); `None` when nothing changed (or nothing was tokenized).
fn restore_row(
    columns: &[wire::Column],
    values: &[Option<&[u8]>],
    ctx: &MaskContext,
) -> Option<Vec<Option<Vec<u8>>>> {
    if !ctx.has_tokens() {
        return None;
    }
    let mut out: Option<Vec<Option<Vec<u8>>>> = None;
    for (i, value) in values.iter().enumerate() {
        let (Some(value), Some(column)) = (value, columns.get(i)) else {
            continue;
        };
        let Some(text) = text_of(column, value) else {
            continue;
        };
        if let std::borrow::Cow::Owned(restored) = crate::mask::restore_bytes(text, ctx) {
            out.get_or_insert_with(|| values.iter().map(|v| v.map(<[u8]>::to_vec)).collect())[i] =
                Some(encode_text(column, restored));
        }
    }
    out
}

impl PgSession {
    /// Masks one text value with the detectors of the response rules; `None` if unchanged.
    fn mask_text(&self, value: &[u8], ctx: &mut MaskContext) -> Option<Vec<u8>> {
        if self.rows.masks.is_empty() {
            return None;
        }
        self.policy
            .mask_body(&self.rows, Some("text/plain"), value, ctx)
    }

    /// Masks a result row (named columns whole, detectors in text values); `None` if
    /// unchanged. Binary values of types that are not text are left as they are.
    fn mask_row(
        &self,
        columns: &[wire::Column],
        values: &[Option<&[u8]>],
        ctx: &mut MaskContext,
    ) -> Option<Vec<Option<Vec<u8>>>> {
        let mut names = Vec::new();
        let mut texts = Vec::new();
        let mut at = Vec::new();
        for (i, value) in values.iter().enumerate() {
            let (Some(value), Some(column)) = (value, columns.get(i)) else {
                continue;
            };
            if let Some(text) = text_of(column, value).and_then(|t| std::str::from_utf8(t).ok()) {
                names.push(column.name.clone());
                texts.push(text.to_string());
                at.push(i);
            }
        }
        let masked = self.policy.mask_row(&self.rows, &names, &texts, ctx);
        let mut out: Option<Vec<Option<Vec<u8>>>> = None;
        for ((i, before), after) in at.into_iter().zip(&texts).zip(masked) {
            if *before == after {
                continue;
            }
            let row =
                out.get_or_insert_with(|| values.iter().map(|v| v.map(<[u8]>::to_vec)).collect());
            row[i] = Some(encode_text(&columns[i], after.into_bytes()));
        }
        out
    }

    /// Keeps a row for the record (`record = "full"`), up to `record_body_limit` bytes.
    fn keep_row(&self, rows: &mut Rows, columns: &[wire::Column], values: &[Option<&[u8]>]) {
        if !rows.complete {
            return;
        }
        let size: usize = values.iter().map(|v| v.map_or(4, <[u8]>::len) + 4).sum();
        let limit = usize::try_from(self.policy.defaults.record_body_limit).unwrap_or(usize::MAX);
        if rows.bytes + size > limit {
            rows.complete = false;
            return;
        }
        rows.bytes += size;
        let row: Vec<serde_json::Value> = values
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                None => serde_json::Value::Null,
                Some(v) => {
                    let text = match columns.get(i) {
                        Some(column) => text_of(column, v),
                        None => Some(*v),
                    };
                    match text.map(std::str::from_utf8) {
                        Some(Ok(s)) => s.into(),
                        _ => format!("<{} bytes>", v.len()).into(),
                    }
                }
            })
            .collect();
        rows.data.push(row.into());
    }
}
