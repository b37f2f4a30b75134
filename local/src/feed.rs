//! The newest records of the change feed, kept in memory as the writer committed them.
//!
//! The change feed is the `navigation` table (see `schema`): the fanout reads each record
//! back after its commit and parses its JSON again. Under load that read and that parse
//! were a tenth of the async workers' time, for records the writer had in hand a moment
//! before. The writer now also appends each committed record here, and the fanout takes
//! them from here while it keeps up: the table stays the feed (it is what a restart, a
//! lagging fanout or `connect replay` read), this is a cache of its newest end.
//!
//! The tail answers for a position only when it holds *every* committed record after
//! it ([`FeedTail::after`] gives `None` otherwise, and the caller reads the table), so
//! a record is never skipped. Whatever changes stored records other than by appending
//! (an erasure) empties it first ([`FeedTail::invalidate`]).
//!
//! An erasure made by another process (`connect privacy erase` next to a running server)
//! cannot empty it. A record of the erased person committed just before may then still
//! be handed on from here: it is as if the fanout had read the table at the record's
//! commit rather than up to one batch window (`delivery.batch_window_ms`) later. Such a
//! message is then one "already in flight": the erasure wrote the suppression first, and
//! delivery drops the message once its suppression cache has it, which the README bounds
//! at 5 s for an erasure by another process, as for any message in flight. (An erasure
//! through the server itself, `POST /privacy/erasure`, empties the tail.)

use domain::NavigationRecord;
use std::collections::VecDeque;
use std::sync::Arc;

/// Most records the tail holds. A fanout that falls further behind reads the table, as
/// it did before there was a tail. At ~1 KB a record this bounds it to ~1 MB, and the
/// fanout releases what it handed on, so under a load it keeps up with the tail holds
/// one batch window's records.
pub const FEED_TAIL_RECORDS: usize = 1024;

/// A committed record and its position in the feed.
pub type Committed = (i64, Arc<NavigationRecord>);

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct FeedTail {
    /// Every record committed with a position above this one is in `records`.
    covers_after: i64,
    /// In position order.
    records: VecDeque<Committed>,
    capacity: usize,
}

impl FeedTail {
    /// An empty tail for a feed whose newest position is `newest`.
    pub(crate) fn new(newest: i64, capacity: usize) -> FeedTail {
        FeedTail {
            covers_after: newest,
            records: VecDeque::new(),
            capacity,
        }
    }

    /// Appends records just committed, in position order.
    pub(crate) fn push(&mut self, committed: impl IntoIterator<Item = Committed>) {
        for entry in committed {
            if self.records.len() >= self.capacity
                && let Some((oldest, _)) = self.records.pop_front()
            {
                self.covers_after = oldest;
            }
            self.records.push_back(entry);
        }
    }

    /// Up to `limit` records after position `after`, in order, if the tail holds every
    /// committed record after it; `None` if the table must be read instead.
    pub(crate) fn after(&self, after: i64, limit: usize) -> Option<Vec<Committed>> {
        if after < self.covers_after {
            return None;
        }
        let start = self.records.partition_point(|(seq, _)| *seq <= after);
        Some(self.records.range(start..).take(limit).cloned().collect())
    }

    /// Drops the records up to position `upto` (handed on: never asked for again).
    pub(crate) fn release(&mut self, upto: i64) {
        while self.records.front().is_some_and(|(seq, _)| *seq <= upto) {
            self.records.pop_front();
        }
        self.covers_after = self.covers_after.max(upto);
    }

    /// Forgets every record: reads of positions up to the newest one go to the table.
    pub(crate) fn invalidate(&mut self) {
        if let Some((newest, _)) = self.records.back() {
            self.covers_after = self.covers_after.max(*newest);
        }
        self.records.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{ClientId, Crm, GtmEvent};

    fn record(n: i64) -> Arc<NavigationRecord> {
        let event = GtmEvent::parse(
            Crm::SFMC,
            serde_json::json!({"clientId": "shop-1", "email": "a@b.co", "eventType": "lead"}),
        )
        .expect("event");
        let client = ClientId::parse("shop-1").expect("client");
        Arc::new(NavigationRecord::new(event, client, Crm::SFMC, n, 1))
    }

    fn seqs(v: Option<Vec<Committed>>) -> Option<Vec<i64>> {
        v.map(|v| v.into_iter().map(|(s, _)| s).collect())
    }

    #[test]
    fn it_answers_only_for_positions_it_holds_everything_after() {
        let mut tail = FeedTail::new(10, 4);
        assert_eq!(seqs(tail.after(10, 100)), Some(vec![]));
        assert_eq!(
            seqs(tail.after(9, 100)),
            None,
            "11 and before are in the table"
        );
        tail.push((11..=13).map(|s| (s, record(s))));
        assert_eq!(seqs(tail.after(10, 100)), Some(vec![11, 12, 13]));
        assert_eq!(seqs(tail.after(11, 1)), Some(vec![12]));
        assert_eq!(seqs(tail.after(13, 100)), Some(vec![]));
        // Full: the oldest goes, and with it the tail's claim on position 11.
        tail.push((14..=15).map(|s| (s, record(s))));
        assert_eq!(tail.len(), 4);
        assert_eq!(seqs(tail.after(10, 100)), None);
        assert_eq!(seqs(tail.after(11, 100)), Some(vec![12, 13, 14, 15]));
    }

    #[test]
    fn released_records_go_and_an_invalidated_tail_sends_readers_to_the_table() {
        let mut tail = FeedTail::new(0, 100);
        tail.push((1..=5).map(|s| (s, record(s))));
        tail.release(3);
        assert_eq!(tail.len(), 2);
        assert_eq!(seqs(tail.after(3, 100)), Some(vec![4, 5]));
        assert_eq!(seqs(tail.after(2, 100)), None);
        tail.invalidate();
        assert_eq!(
            seqs(tail.after(3, 100)),
            None,
            "4 and 5 may have been erased"
        );
        assert_eq!(seqs(tail.after(5, 100)), Some(vec![]));
        tail.push([(6, record(6))]);
        assert_eq!(seqs(tail.after(5, 100)), Some(vec![6]));
        // Releasing past everything keeps the claim on what comes next.
        tail.release(6);
        assert_eq!(seqs(tail.after(6, 100)), Some(vec![]));
        tail.push([(7, record(7))]);
        assert_eq!(seqs(tail.after(6, 100)), Some(vec![7]));
    }
}
