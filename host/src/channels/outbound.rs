//! Replies going out to a chat platform: split to the platform's length limit on sensible
//! boundaries, queued per bot, and paced per chat, per group and per bot, honouring the
//! platform's `retry_after`.
//!
//! Each bot (account) has its own queue and worker task, so one tenant's burst never delays
//! another tenant's bot. Inside one bot, chats are served round-robin: a long reply to one chat
//! does not hold up the others.
//!
//! Bounded: at most `Limits::queue` texts wait per bot and `Limits::chat_queue` per chat. At a
//! bound a turn's reply waits for room (backpressure: the reply is kept, the turn's session
//! waits), while a notice (pairing code, greeting) is refused and the caller counts and logs it.
//! Every queued text has a receipt (`Delivery`), so a caller can tell sent from dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

/// Chats whose pacing deadline a bot remembers before forgetting the expired ones.
const MAX_TRACKED_CHATS: usize = 4096;

/// Where a reply goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTarget {
    pub chat: String,
    /// A forum topic inside the chat.
    pub thread: Option<String>,
    /// Groups get the slower group pace.
    pub group: bool,
}

/// Why one send failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Flood control: wait this long, then retry (the whole bot pauses).
    RetryAfter(Duration),
    /// The bot's credentials were rejected: the worker stops.
    Unauthorized,
    /// Worth retrying (network, 5xx).
    Transient(String),
    /// Retrying will not help (chat gone, bot blocked); the message is dropped with a log line.
    Permanent(String),
    /// This gateway no longer owns the bot (its lease lapsed): the worker stops, and what it
    /// had not sent stays in the inbox for the bot's next owner.
    NotOwner,
}

/// A transport that sends only while this gateway holds the bot's lease.
pub struct Fenced {
    pub inner: Arc<dyn Transport>,
    pub validity: crate::cluster::lease::Validity,
}

#[async_trait::async_trait]
impl Transport for Fenced {
    async fn send(&self, to: &ChatTarget, text: &str) -> Result<(), SendError> {
        if !self.validity.is_valid() {
            return Err(SendError::NotOwner);
        }
        self.inner.send(to, text).await
    }

    async fn typing(&self, to: &ChatTarget) {
        if self.validity.is_valid() {
            self.inner.typing(to).await;
        }
    }
}

/// The platform call that delivers one message.
#[async_trait::async_trait]
pub trait Transport: Send + Sync + 'static {
    async fn send(&self, to: &ChatTarget, text: &str) -> Result<(), SendError>;

    /// Shows that an answer is being written (best effort; by default nothing).
    async fn typing(&self, to: &ChatTarget) {
        let _ = to;
    }
}

/// Pacing (Telegram: about 1 message/s per chat, 20/min per group, 30/s per bot) and bounds.
#[derive(Debug, Clone)]
pub struct Limits {
    pub per_chat: Duration,
    pub per_group: Duration,
    pub per_bot: Duration,
    /// Most texts waiting in one bot's queue, all chats together.
    pub queue: usize,
    /// Most texts waiting for one chat.
    pub chat_queue: usize,
    /// Retries of one message after transient failures or flood control.
    pub max_retries: u32,
    /// Longest text of one message, in UTF-16 code units.
    pub max_len: usize,
}

impl Limits {
    pub fn telegram(max_len: usize) -> Self {
        Self {
            per_chat: Duration::from_secs(1),
            per_group: Duration::from_secs(3),
            per_bot: Duration::from_millis(34),
            queue: 1024,
            chat_queue: 32,
            max_retries: 5,
            max_len,
        }
    }

    /// Discord: 5 messages per 5 s per channel, 50 requests per second per bot.
    pub fn discord(max_len: usize) -> Self {
        Self {
            per_chat: Duration::from_secs(1),
            per_group: Duration::from_secs(1),
            per_bot: Duration::from_millis(20),
            ..Self::telegram(max_len)
        }
    }
}

/// Splits `text` into pieces of at most `max` UTF-16 code units, preferring paragraph breaks,
/// then line breaks, then sentence ends, then spaces; never inside a character.
pub fn split(text: &str, max: usize) -> Vec<String> {
    let max = max.max(1);
    let mut out = Vec::new();
    let mut rest = text.trim_end();
    while !rest.is_empty() {
        // The longest prefix that fits, as a byte index on a char boundary.
        let mut units = 0;
        let mut fit = rest.len();
        for (i, c) in rest.char_indices() {
            if units + c.len_utf16() > max {
                fit = i;
                break;
            }
            units += c.len_utf16();
        }
        if fit == rest.len() {
            out.push(rest.to_string());
            break;
        }
        let head = &rest[..fit];
        let cut = ["\n\n", "\n", ". ", "! ", "? ", " "]
            .iter()
            .filter_map(|sep| head.rfind(sep).map(|i| i + sep.len()))
            // A boundary in the first half would make tiny pieces; cut hard instead.
            .find(|&i| i > fit / 2)
            .unwrap_or(fit.max(rest.chars().next().map_or(1, char::len_utf8)));
        let piece = rest[..cut].trim_end();
        if !piece.is_empty() {
            out.push(piece.to_string());
        }
        rest = rest[cut..].trim_start_matches(['\n', ' ']);
    }
    out
}

/// What became of a queued text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Every piece was sent.
    Sent,
    /// The platform refused it for good (chat gone, bot blocked) or it failed too often.
    Dropped,
    /// The bot stopped (token rejected, shutdown) before it was sent.
    Stopped,
}

/// Why a text was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The chat's or the bot's queue is at its bound.
    Full,
    /// The bot has stopped.
    Stopped,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Full => "the outbound queue is full",
            Refused::Stopped => "the bot has stopped",
        }
    }
}

struct Job {
    to: ChatTarget,
    text: String,
    done: oneshot::Sender<Delivery>,
}

struct Pending {
    to: ChatTarget,
    text: String,
    attempts: u32,
    /// The last piece of its text carries the text's receipt.
    done: Option<oneshot::Sender<Delivery>>,
}

/// Texts queued but not finished, per bot and per chat: the bounds are checked here, before a
/// text enters the queue, so the worker's own per-chat queues never grow past them.
struct Load {
    state: Mutex<LoadState>,
    room: Notify,
    max_bot: usize,
    max_chat: usize,
}

#[derive(Default)]
struct LoadState {
    total: usize,
    chats: HashMap<String, usize>,
    stopped: bool,
}

impl Load {
    fn try_reserve(&self, chat: &str) -> Result<(), Refused> {
        let mut st = self.state.lock().expect("outbound load lock");
        if st.stopped {
            return Err(Refused::Stopped);
        }
        let in_chat = st.chats.get(chat).copied().unwrap_or(0);
        if st.total >= self.max_bot || in_chat >= self.max_chat {
            return Err(Refused::Full);
        }
        st.total += 1;
        st.chats.insert(chat.to_string(), in_chat + 1);
        Ok(())
    }

    fn release(&self, chat: &str) {
        let mut st = self.state.lock().expect("outbound load lock");
        st.total = st.total.saturating_sub(1);
        if let Some(n) = st.chats.get_mut(chat) {
            *n -= 1;
            if *n == 0 {
                st.chats.remove(chat);
            }
        }
        drop(st);
        self.room.notify_waiters();
    }

    fn stop(&self) {
        self.state.lock().expect("outbound load lock").stopped = true;
        self.room.notify_waiters();
    }
}

/// The typing indicator of one turn; dropping it stops renewing it.
pub struct Typing(tokio::task::JoinHandle<()>);

impl Drop for Typing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A bot's outbound queue. Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::UnboundedSender<Job>,
    load: Arc<Load>,
    label: Arc<str>,
    transport: Arc<dyn Transport>,
}

impl Outbound {
    /// Starts the bot's worker. `label` names the bot in logs (`telegram/acme`).
    pub fn start(label: &str, transport: Arc<dyn Transport>, limits: Limits) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let label: Arc<str> = Arc::from(label);
        let load = Arc::new(Load {
            state: Mutex::default(),
            room: Notify::new(),
            max_bot: limits.queue.max(1),
            max_chat: limits.chat_queue.max(1),
        });
        tokio::spawn(worker(label.clone(), transport.clone(), limits, rx, load.clone()));
        Self { tx, load, label, transport }
    }

    /// Turns the typing indicator on in `to` (waiting at most a second for the platform) and
    /// keeps it on until the returned guard is dropped (the platform shows it for a few seconds
    /// per call; it is renewed every 8 s).
    pub async fn typing(&self, to: ChatTarget) -> Typing {
        let transport = self.transport.clone();
        let _ = tokio::time::timeout(Duration::from_secs(1), transport.typing(&to)).await;
        Typing(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(8)).await;
                transport.typing(&to).await;
            }
        }))
    }

    /// Queues a reply (split as needed), waiting while the chat or the bot is at its bound
    /// (backpressure on the turn that produced it; nothing is dropped). The receipt says what
    /// became of it; `Err` only when the bot has stopped.
    pub async fn send(&self, to: ChatTarget, text: String) -> Result<oneshot::Receiver<Delivery>, Refused> {
        loop {
            let room = self.load.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.load.try_reserve(&to.chat) {
                Ok(()) => return self.push(to, text),
                Err(Refused::Full) => room.await,
                Err(Refused::Stopped) => return Err(Refused::Stopped),
            }
        }
    }

    /// Queues a short notice (a pairing code, a greeting) without waiting: at a bound it is
    /// refused and the caller counts and logs the refusal.
    pub fn try_send(&self, to: ChatTarget, text: String) -> Result<(), Refused> {
        self.load.try_reserve(&to.chat)?;
        self.push(to, text).map(drop)
    }

    fn push(&self, to: ChatTarget, text: String) -> Result<oneshot::Receiver<Delivery>, Refused> {
        let (done, receipt) = oneshot::channel();
        let chat = to.chat.clone();
        if self.tx.send(Job { to, text, done }).is_err() {
            self.load.release(&chat);
            tracing::error!(bot = %self.label, "Reply not queued: the bot has stopped.");
            return Err(Refused::Stopped);
        }
        Ok(receipt)
    }
}

async fn worker(
    label: Arc<str>,
    transport: Arc<dyn Transport>,
    limits: Limits,
    mut rx: mpsc::UnboundedReceiver<Job>,
    load: Arc<Load>,
) {
    let mut queues: HashMap<String, VecDeque<Pending>> = HashMap::new();
    // Round-robin order of chats with something to send.
    let mut order: VecDeque<String> = VecDeque::new();
    let mut next_at: HashMap<String, Instant> = HashMap::new();
    let mut bot_next = Instant::now();
    let mut open = true;
    let finish = |p: Pending, how: Delivery| {
        if let Some(done) = p.done {
            load.release(&p.to.chat);
            let _ = done.send(how);
        }
    };
    loop {
        // Take in everything that is waiting (bounded by `Load`).
        while let Ok(job) = rx.try_recv() {
            enqueue(&mut queues, &mut order, &limits, job, &load);
        }
        if order.is_empty() {
            if !open {
                break;
            }
            match rx.recv().await {
                Some(job) => enqueue(&mut queues, &mut order, &limits, job, &load),
                None => break,
            }
            continue;
        }
        let now = Instant::now();
        let ready = order.iter().position(|c| next_at.get(c).is_none_or(|t| *t <= now));
        let Some(pos) = ready else {
            let wake = order.iter().filter_map(|c| next_at.get(c)).min().copied().unwrap_or(now);
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                m = rx.recv(), if open => match m {
                    Some(job) => enqueue(&mut queues, &mut order, &limits, job, &load),
                    None => open = false,
                },
            }
            continue;
        };
        tokio::time::sleep_until(bot_next).await;
        let chat = order.remove(pos).expect("position is in range");
        let q = queues.get_mut(&chat).expect("queued chat has a queue");
        let p = q.front_mut().expect("queued chat has a message");
        let result = transport.send(&p.to, &p.text).await;
        let now = Instant::now();
        bot_next = now + limits.per_bot;
        let pace = if p.to.group { limits.per_group } else { limits.per_chat };
        match result {
            Ok(()) => {
                finish(q.pop_front().expect("front exists"), Delivery::Sent);
                next_at.insert(chat.clone(), now + pace);
                // Bounded: forget chats whose pace has passed once many have been served.
                if next_at.len() > MAX_TRACKED_CHATS {
                    next_at.retain(|_, t| *t > now);
                }
            }
            Err(SendError::RetryAfter(wait)) => {
                p.attempts += 1;
                tracing::warn!(bot = %label, retry_after_secs = wait.as_secs(), "Flood control: pausing this bot.");
                bot_next = now + wait;
                if p.attempts > limits.max_retries {
                    tracing::error!(bot = %label, "Reply dropped after repeated flood control.");
                    finish(q.pop_front().expect("front exists"), Delivery::Dropped);
                }
            }
            Err(SendError::Transient(why)) => {
                p.attempts += 1;
                if p.attempts > limits.max_retries {
                    tracing::error!(bot = %label, error = %why, "Reply dropped after repeated failures.");
                    finish(q.pop_front().expect("front exists"), Delivery::Dropped);
                } else {
                    let backoff = Duration::from_millis(500 << p.attempts.min(6));
                    tracing::warn!(bot = %label, error = %why, attempt = p.attempts, "Send failed; retrying.");
                    next_at.insert(chat.clone(), now + backoff);
                }
            }
            Err(SendError::Permanent(why)) => {
                tracing::warn!(bot = %label, error = %why, "Reply cannot be delivered; dropped.");
                finish(q.pop_front().expect("front exists"), Delivery::Dropped);
            }
            Err(SendError::NotOwner) => {
                tracing::warn!(bot = %label, "This gateway no longer owns the bot; its unsent replies are left to the next owner.");
                break;
            }
            Err(SendError::Unauthorized) => {
                let lost: usize = queues.values().map(VecDeque::len).sum();
                tracing::error!(bot = %label, dropped = lost, "The platform rejected the bot's token; outbound stopped.");
                break;
            }
        }
        if queues.get(&chat).is_some_and(|q| !q.is_empty()) {
            order.push_back(chat);
        } else {
            queues.remove(&chat);
        }
    }
    // Whatever is left was not sent: its receipts say so, and later sends are refused.
    load.stop();
    rx.close();
    while let Ok(job) = rx.try_recv() {
        let _ = job.done.send(Delivery::Stopped);
    }
    for p in queues.into_values().flatten() {
        if let Some(done) = p.done {
            let _ = done.send(Delivery::Stopped);
        }
    }
}

fn enqueue(
    queues: &mut HashMap<String, VecDeque<Pending>>,
    order: &mut VecDeque<String>,
    limits: &Limits,
    job: Job,
    load: &Load,
) {
    let Job { to, text, done } = job;
    let chat = to.chat.clone();
    let pieces = split(&text, limits.max_len);
    if pieces.is_empty() {
        load.release(&chat);
        let _ = done.send(Delivery::Sent);
        return;
    }
    let q = queues.entry(chat.clone()).or_default();
    let was_empty = q.is_empty();
    let mut done = Some(done);
    let n = pieces.len();
    for (i, piece) in pieces.into_iter().enumerate() {
        let done = if i + 1 == n { done.take() } else { None };
        q.push_back(Pending { to: to.clone(), text: piece, attempts: 0, done });
    }
    if was_empty {
        order.push_back(chat);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn splits_on_boundaries_within_the_limit() {
        let para = format!("{}\n\n{}", "a".repeat(30), "b".repeat(30));
        assert_eq!(split(&para, 40), vec!["a".repeat(30), "b".repeat(30)]);
        let words = "alpha beta gamma delta epsilon";
        for piece in split(words, 12) {
            assert!(piece.len() <= 12 && !piece.starts_with(' ') && !piece.ends_with(' '), "{piece:?}");
        }
        assert_eq!(split(words, 12).join(" "), words);
        // No boundary: a hard cut, never inside a character (emoji are 2 UTF-16 units).
        let emoji = "😀".repeat(5);
        let parts = split(&emoji, 3);
        assert!(parts.iter().all(|p| p.encode_utf16().count() <= 3), "{parts:?}");
        assert_eq!(parts.concat(), emoji);
        assert_eq!(split("short", 4096), vec!["short"]);
        assert!(split("   ", 10).is_empty());
        let long = "word ".repeat(2000);
        let parts = split(&long, 4096);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.encode_utf16().count() <= 4096));
    }

    #[derive(Default)]
    struct Recorder {
        sent: Mutex<Vec<(Instant, String, String)>>,
        fail_first: Mutex<Vec<SendError>>,
    }

    #[async_trait::async_trait]
    impl Transport for Recorder {
        async fn send(&self, to: &ChatTarget, text: &str) -> Result<(), SendError> {
            if let Some(e) = self.fail_first.lock().unwrap().pop() {
                return Err(e);
            }
            self.sent.lock().unwrap().push((Instant::now(), to.chat.clone(), text.to_string()));
            Ok(())
        }
    }

    fn target(chat: &str, group: bool) -> ChatTarget {
        ChatTarget { chat: chat.into(), thread: None, group }
    }

    async fn settle(rec: &Recorder, n: usize) {
        for _ in 0..10_000 {
            if rec.sent.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("only {} of {n} messages sent", rec.sent.lock().unwrap().len());
    }

    #[tokio::test(start_paused = true)]
    async fn paces_each_chat_and_serves_chats_round_robin() {
        let rec = Arc::new(Recorder::default());
        let out = Outbound::start("test/a", rec.clone(), Limits { max_len: 10, ..Limits::telegram(10) });
        let t0 = Instant::now();
        // Three pieces for chat 1, one for chat 2 and one for group chat -3.
        for (chat, group, text) in [
            ("1", false, "aaaaaaaaa bbbbbbbbb ccccccccc"),
            ("2", false, "hello"),
            ("-3", true, "g1"),
            ("-3", true, "g2"),
        ] {
            out.try_send(target(chat, group), text.into()).unwrap();
        }
        settle(&rec, 6).await;
        let sent = rec.sent.lock().unwrap().clone();
        let at = |chat: &str| -> Vec<Duration> {
            sent.iter().filter(|(_, c, _)| c == chat).map(|(t, _, _)| *t - t0).collect()
        };
        let one = at("1");
        assert_eq!(one.len(), 3);
        assert!(one[1] - one[0] >= Duration::from_secs(1) && one[2] - one[1] >= Duration::from_secs(1));
        // Chat 2 is not stuck behind chat 1's three pieces.
        assert!(at("2")[0] < Duration::from_secs(1), "{:?}", at("2"));
        let g = at("-3");
        assert!(g[1] - g[0] >= Duration::from_secs(3), "group pace: {g:?}");
        // Every send is at least the per-bot interval after the previous one.
        for w in sent.windows(2) {
            assert!(w[1].0 - w[0].0 >= Duration::from_millis(34));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after_and_retries_the_same_message() {
        let rec = Arc::new(Recorder::default());
        rec.fail_first.lock().unwrap().push(SendError::RetryAfter(Duration::from_secs(7)));
        let out = Outbound::start("test/b", rec.clone(), Limits::telegram(4096));
        let t0 = Instant::now();
        let receipt = out.send(target("1", false), "once".into()).await.unwrap();
        settle(&rec, 1).await;
        assert_eq!(receipt.await, Ok(Delivery::Sent));
        let sent = rec.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 1, "delivered exactly once");
        assert!(sent[0].0 - t0 >= Duration::from_secs(7), "waited retry_after");
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoked_token_stops_the_worker_and_later_sends_are_refused() {
        let rec = Arc::new(Recorder::default());
        rec.fail_first.lock().unwrap().push(SendError::Unauthorized);
        let out = Outbound::start("test/c", rec.clone(), Limits::telegram(4096));
        let receipt = out.send(target("1", false), "x".into()).await.unwrap();
        assert_eq!(receipt.await, Ok(Delivery::Stopped), "the unsent reply's receipt says so");
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if out.try_send(target("1", false), "y".into()) == Err(Refused::Stopped) {
                assert!(rec.sent.lock().unwrap().is_empty());
                return;
            }
        }
        panic!("the worker kept running after Unauthorized");
    }

    /// A transport that holds every send until the test lets it through.
    struct Gate {
        open: tokio::sync::Semaphore,
        sent: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl Transport for Gate {
        async fn send(&self, _to: &ChatTarget, text: &str) -> Result<(), SendError> {
            self.open.acquire().await.expect("gate open").forget();
            self.sent.lock().unwrap().push(text.to_string());
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn queues_are_bounded_per_chat_and_per_bot_and_replies_wait_for_room() {
        let gate = Arc::new(Gate { open: tokio::sync::Semaphore::new(0), sent: Mutex::default() });
        let limits = Limits { queue: 5, chat_queue: 3, ..Limits::telegram(4096) };
        let out = Outbound::start("test/d", gate.clone(), limits);
        let mut receipts = Vec::new();
        for i in 0..3 {
            receipts.push(out.send(target("1", false), format!("r{i}")).await.unwrap());
        }
        // The chat is at its bound: a notice is refused, a reply waits (and is not lost).
        assert_eq!(out.try_send(target("1", false), "notice".into()), Err(Refused::Full));
        let waiting = tokio::spawn({
            let out = out.clone();
            async move { out.send(target("1", false), "r3".into()).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished(), "the fourth reply to one chat waits for room");
        // Other chats still have room, up to the bot's bound.
        out.try_send(target("2", false), "a".into()).unwrap();
        out.try_send(target("3", false), "b".into()).unwrap();
        assert_eq!(out.try_send(target("4", false), "c".into()), Err(Refused::Full), "bot bound");
        // Sending one frees one place: the waiting reply gets in, nothing was dropped.
        gate.open.add_permits(1);
        let late = tokio::time::timeout(Duration::from_secs(60), waiting).await.unwrap().unwrap().unwrap();
        gate.open.add_permits(100);
        for r in receipts {
            assert_eq!(r.await, Ok(Delivery::Sent));
        }
        assert_eq!(late.await, Ok(Delivery::Sent));
        let sent = gate.sent.lock().unwrap().clone();
        for t in ["r0", "r1", "r2", "r3", "a", "b"] {
            assert_eq!(sent.iter().filter(|s| *s == t).count(), 1, "{t} sent once: {sent:?}");
        }
        assert!(!sent.iter().any(|s| s == "notice" || s == "c"), "refused notices were not queued");
    }
}
