//! The queue consumer of `cargo run --example consumer`, shared with `tests/consumer.rs`: raw
//! messages on a tokio `mpsc` queue, one unit of work per message, and three handlers — one
//! clean, one that keeps what it decoded of every message, one that parks a task per message.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Mutex;

use leakwatch::LeakDetector;
use tokio::sync::{mpsc, oneshot};

/// The note each order carries, in bytes.
pub const NOTE_BYTES: usize = 1000;

/// A message as it arrives: raw bytes, `id;item;note`.
pub fn message(id: u64) -> Vec<u8> {
    let note = "n".repeat(NOTE_BYTES);
    format!("{id};widget-{};{note}", id % 7).into_bytes()
}

/// A decoded order. Decoding happens in the handler, inside the message's unit: what it
/// allocates is the unit's.
#[derive(Debug)]
pub struct Order {
    pub id: u64,
    pub item: String,
    pub note: String,
}

impl Order {
    pub fn decode(raw: &[u8]) -> Option<Order> {
        let text = std::str::from_utf8(raw).ok()?;
        let mut fields = text.splitn(3, ';');
        Some(Order {
            id: fields.next()?.parse().ok()?,
            item: fields.next()?.to_owned(),
            note: fields.next()?.to_owned(),
        })
    }

    /// The heap bytes a decoded order holds.
    pub fn heap_bytes(&self) -> usize {
        self.item.capacity() + self.note.capacity()
    }
}

/// Sends `count` messages, then closes the queue.
pub async fn produce(queue: mpsc::Sender<Vec<u8>>, count: u64) {
    for id in 0..count {
        if queue.send(message(id)).await.is_err() {
            return;
        }
    }
}

/// Takes messages off `queue` until it closes, handling each as one unit of work named
/// `name`; returns how many it handled.
pub async fn consume<F, Fut>(
    detector: &LeakDetector,
    name: &'static str,
    mut queue: mpsc::Receiver<Vec<u8>>,
    handler: F,
) -> u64
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut handled = 0;
    while let Some(raw) = queue.recv().await {
        detector.scope(name, handler(raw)).await;
        handled += 1;
    }
    handled
}

/// Clean: decodes, ships the order on a task it waits for, remembers the last 16 ids.
pub async fn ship(raw: Vec<u8>) {
    static RECENT: Mutex<VecDeque<u64>> = Mutex::new(VecDeque::new());
    let Some(order) = Order::decode(&raw) else {
        return;
    };
    let shipped = tokio::spawn(async move { order.note.len() + order.item.len() });
    let _ = shipped.await;
    let mut recent = RECENT.lock().unwrap();
    if recent.len() == 16 {
        recent.pop_front();
    }
    recent.push_back(order.id);
}

/// Every order this consumer has audited, kept for ever: the leak of [`audit`].
pub static AUDIT_LOG: Mutex<Vec<Order>> = Mutex::new(Vec::new());

/// Leaky: keeps every order it decoded.
pub async fn audit(raw: Vec<u8>) {
    if let Some(order) = Order::decode(&raw) {
        AUDIT_LOG.lock().unwrap().push(order);
    }
}

/// Acknowledgements the downstream service never sends: the leak of [`notify`].
pub static PENDING_ACKS: Mutex<Option<HashMap<u64, oneshot::Sender<()>>>> = Mutex::new(None);

/// Leaky: parks a task per message, waiting for an acknowledgement that never comes.
pub async fn notify(raw: Vec<u8>) {
    let Some(order) = Order::decode(&raw) else {
        return;
    };
    let (ack, acked) = oneshot::channel();
    let mut pending = PENDING_ACKS.lock().unwrap();
    pending
        .get_or_insert_with(HashMap::new)
        .insert(order.id, ack);
    wait_for_ack(acked);
}

/// The line of [`wait_for_ack`]'s spawn: where [`notify`]'s tasks are reported.
pub const NOTIFY_SPAWN_LINE: u32 = line!() + 2;
fn wait_for_ack(acked: oneshot::Receiver<()>) {
    tokio::spawn(async move {
        let _ = acked.await;
    });
}
