//! Handing inbound messages to the running stage without the driver waiting on it: a message
//! that finds the stage's inbox full is held, in order, and goes in as room frees (an arm of
//! the driver's `select!`), so plan notices, break reports and stage ends are handled
//! meanwhile. Past [`HELD`] held messages the driver stops reading its mailbox until the stage
//! catches up (back-pressure on the senders, as a full inbox gave before).

use std::collections::VecDeque;

use tokio::sync::mpsc;

use crate::shard::pipeline::mailbox::Inbound;

/// Messages held for a stage that is behind before the driver stops reading its mailbox.
pub(super) const HELD: usize = 256;

/// The running stage's inbox and the messages held for it.
#[derive(Debug)]
pub(super) struct Handoff {
    inbox: mpsc::Sender<Inbound>,
    /// Oldest first.
    held: VecDeque<Inbound>,
}

impl Handoff {
    pub(super) fn new(inbox: mpsc::Sender<Inbound>) -> Self {
        Self {
            inbox,
            held: VecDeque::new(),
        }
    }

    /// Hands `message` to the stage, after those held before it.
    pub(super) fn deliver(&mut self, message: Inbound) {
        if !self.held.is_empty() {
            self.held.push_back(message);
            return;
        }
        match self.inbox.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => self.held.push_back(message),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!("stage gone; message dropped");
            }
        }
    }

    /// While messages are held: a sender to wait for room with ([`room_in`]).
    pub(super) fn room(&self) -> Option<mpsc::Sender<Inbound>> {
        (!self.held.is_empty()).then(|| self.inbox.clone())
    }

    /// Whether another message may be held.
    pub(super) fn can_hold(&self) -> bool {
        self.held.len() < HELD
    }

    /// Room freed (`permit`; `None`: the stage is gone): the oldest held message goes in, and
    /// as many after it as fit now.
    pub(super) fn on_room(&mut self, permit: Option<mpsc::OwnedPermit<Inbound>>) {
        let Some(permit) = permit else {
            self.held.clear();
            return;
        };
        if let Some(message) = self.held.pop_front() {
            permit.send(message);
        }
        while let Some(message) = self.held.pop_front() {
            match self.inbox.try_send(message) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(message)) => {
                    self.held.push_front(message);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.held.clear();
                    break;
                }
            }
        }
    }
}

/// Room for one message in a stage's inbox: never with no sender, `None` once the stage is
/// gone.
pub(super) async fn room_in(
    inbox: Option<mpsc::Sender<Inbound>>,
) -> Option<mpsc::OwnedPermit<Inbound>> {
    match inbox {
        Some(inbox) => inbox.reserve_owned().await.ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use libp2p::PeerId;
    use murmur_protocol::RunId;
    use murmur_protocol::pipeline::{PIPE_VERSION, PipeBody, PipeHeader};

    use super::*;

    fn message(step: u64) -> Inbound {
        Inbound {
            peer: PeerId::random(),
            header: PipeHeader {
                version: PIPE_VERSION,
                run: RunId([0; 32]),
                epoch: 1,
                step,
                micro: 0,
                micros: 1,
                tensor: None,
                body: PipeBody::Commit { grad_norm: 1.0 },
            },
            payload: Vec::new(),
        }
    }

    /// A stage that is behind never makes the driver wait: what does not fit is held, and
    /// reaches the stage in order as it reads.
    #[tokio::test]
    async fn messages_that_find_the_inbox_full_are_held_and_arrive_in_order() {
        let (inbox, mut rx) = mpsc::channel(2);
        let mut handoff = Handoff::new(inbox);
        for step in 0..5 {
            handoff.deliver(message(step));
        }
        assert_eq!(handoff.held.len(), 3);
        let mut seen = Vec::new();
        while seen.len() < 5 {
            if let Some(room) = handoff.room() {
                // The driver's loop would be doing other work here until room frees.
                let waiting = tokio::spawn(room_in(Some(room)));
                seen.push(rx.recv().await.expect("a message").header.step);
                let permit = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
                    .await
                    .expect("room frees")
                    .expect("joined");
                handoff.on_room(permit);
            } else {
                seen.push(rx.recv().await.expect("a message").header.step);
            }
        }
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        assert!(handoff.room().is_none());
    }

    #[tokio::test]
    async fn held_messages_are_bounded_and_dropped_with_the_stage() {
        let (inbox, rx) = mpsc::channel(1);
        let mut handoff = Handoff::new(inbox);
        handoff.deliver(message(0));
        for step in 1..=HELD as u64 {
            assert!(handoff.can_hold());
            handoff.deliver(message(step));
        }
        assert!(!handoff.can_hold(), "the driver stops reading its mailbox");
        drop(rx);
        let room = handoff.room().expect("messages held");
        handoff.on_room(room_in(Some(room)).await);
        assert!(handoff.held.is_empty() && handoff.can_hold());
    }
}
