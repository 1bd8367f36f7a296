//! What a session has to report to its owner, in the order it happened: received
//! messages, and the other [`SessionEvent`]s among them.
//!
//! Messages are queued on their own, as `Message`s rather than inside a
//! `SessionEvent`: a message is 184 bytes, and each wrapping or unwrapping on its way
//! to a dispatcher was a copy of all of it. The owner looks at the message at the
//! front where it lies ([`EventQueue::next_message`]) and takes it straight into the
//! dispatcher's call. Each other event carries the number of messages queued before
//! it, which keeps the two queues in one order.

use std::collections::VecDeque;

use super::session::SessionEvent;
use crate::message::Message;

/// A session's events, messages among them, in order.
#[derive(Debug, Default)]
pub(crate) struct EventQueue {
    msgs: VecDeque<Message>,
    /// Each with the number of messages pushed before it: those taken so far and
    /// those still queued.
    others: VecDeque<(u64, SessionEvent)>,
    /// Messages taken so far.
    taken: u64,
}

impl EventQueue {
    /// Queues `ev` after everything queued so far.
    pub(crate) fn push(&mut self, ev: SessionEvent) {
        match ev {
            SessionEvent::Message(m) => self.push_message(m),
            ev => self.others.push_back((self.taken + self.msgs.len() as u64, ev)),
        }
    }

    /// Queues message `m` after everything queued so far.
    #[inline]
    pub(crate) fn push_message(&mut self, m: Message) {
        self.msgs.push_back(m);
    }

    /// Whether the next event is another than a message.
    fn other_first(&self) -> bool {
        self.others.front().is_some_and(|(before, _)| *before == self.taken)
    }

    /// The next event, if any.
    pub(crate) fn pop(&mut self) -> Option<SessionEvent> {
        if self.other_first() || self.msgs.is_empty() {
            return self.others.pop_front().map(|(_, ev)| ev);
        }
        self.take_message().map(SessionEvent::Message)
    }

    /// The next event, if it is a message.
    #[inline]
    pub(crate) fn next_message(&mut self) -> Option<NextMessage<'_>> {
        if self.msgs.is_empty() || self.other_first() {
            return None;
        }
        Some(NextMessage(self))
    }

    #[inline]
    fn take_message(&mut self) -> Option<Message> {
        let m = self.msgs.pop_front()?;
        self.taken += 1;
        Some(m)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.msgs.is_empty() && self.others.is_empty()
    }

    /// The first message still queued.
    pub(crate) fn first_message(&self) -> Option<&Message> {
        self.msgs.front()
    }

    /// Whether either queue grew past `keep`.
    pub(crate) fn grown(&self, keep: usize) -> bool {
        self.msgs.capacity() > keep || self.others.capacity() > keep
    }

    /// Gives back room beyond `keep` (or beyond what is queued).
    pub(crate) fn shrink_to(&mut self, keep: usize) {
        self.msgs.shrink_to(keep);
        self.others.shrink_to(keep);
    }
}

/// The message at the front of a session's events ([`Session::next_message`]), to
/// look at where it lies and then take.
///
/// [`Session::next_message`]: super::session::Session::next_message
pub struct NextMessage<'a>(&'a mut EventQueue);

impl NextMessage<'_> {
    /// The message, where it is queued.
    #[inline]
    pub fn get(&self) -> &Message {
        match self.0.msgs.front() {
            Some(m) => m,
            // Made only with a message in front, and the queue is borrowed meanwhile.
            None => unreachable!("NextMessage without a message in front"),
        }
    }

    /// Takes the message off the session's events.
    #[inline]
    pub fn take(self) -> Message {
        match self.0.take_message() {
            Some(m) => m,
            None => unreachable!("NextMessage without a message in front"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(seq: u64) -> Message {
        Message { seq, ..Message::new(1, Bytes::new()) }
    }

    fn seq_of(ev: Option<SessionEvent>) -> Option<u64> {
        match ev {
            Some(SessionEvent::Message(m)) => Some(m.seq),
            _ => None,
        }
    }

    #[test]
    fn an_empty_queue_has_nothing_to_pop_or_take() {
        let mut q = EventQueue::default();
        assert!(q.is_empty());
        assert!(q.pop().is_none());
        assert!(q.next_message().is_none());
    }

    #[test]
    fn messages_come_out_in_the_order_they_went_in() {
        let mut q = EventQueue::default();
        for seq in 1..=3 {
            q.push(SessionEvent::Message(msg(seq)));
        }
        assert_eq!(q.first_message().map(|m| m.seq), Some(1));
        assert_eq!(seq_of(q.pop()), Some(1));
        let next = q.next_message().expect("a message is next");
        assert_eq!(next.get().seq, 2);
        assert_eq!(next.take().seq, 2);
        assert_eq!(seq_of(q.pop()), Some(3));
        assert!(q.is_empty());
    }

    #[test]
    fn an_event_between_messages_comes_out_between_them() {
        let mut q = EventQueue::default();
        q.push_message(msg(1));
        q.push(SessionEvent::KeepaliveDue);
        q.push_message(msg(2));
        q.push(SessionEvent::GlobalSeqAtLeast(7));
        q.push(SessionEvent::KeepaliveDue);
        assert_eq!(q.next_message().map(NextMessage::take).map(|m| m.seq), Some(1));
        // The event is next: no message is offered until it is popped.
        assert!(q.next_message().is_none());
        assert_eq!(q.pop(), Some(SessionEvent::KeepaliveDue));
        assert_eq!(seq_of(q.pop()), Some(2));
        assert!(q.next_message().is_none());
        assert_eq!(q.pop(), Some(SessionEvent::GlobalSeqAtLeast(7)));
        assert_eq!(q.pop(), Some(SessionEvent::KeepaliveDue));
        assert!(q.pop().is_none());
        assert!(q.is_empty());
    }

    #[test]
    fn an_event_before_any_message_comes_first() {
        let mut q = EventQueue::default();
        q.push(SessionEvent::KeepaliveDue);
        q.push_message(msg(1));
        assert!(q.next_message().is_none());
        assert_eq!(q.pop(), Some(SessionEvent::KeepaliveDue));
        assert_eq!(q.next_message().map(|n| n.get().seq), Some(1));
    }

    #[test]
    fn events_pushed_after_everything_was_taken_are_next() {
        let mut q = EventQueue::default();
        q.push_message(msg(1));
        assert_eq!(seq_of(q.pop()), Some(1));
        q.push(SessionEvent::KeepaliveDue);
        q.push_message(msg(2));
        assert_eq!(q.pop(), Some(SessionEvent::KeepaliveDue));
        assert_eq!(seq_of(q.pop()), Some(2));
    }

    #[test]
    fn grown_queues_shrink_back() {
        let mut q = EventQueue::default();
        for seq in 0..100 {
            q.push_message(msg(seq));
        }
        assert!(q.grown(8));
        while q.pop().is_some() {}
        q.shrink_to(8);
        assert!(!q.grown(8));
    }
}
