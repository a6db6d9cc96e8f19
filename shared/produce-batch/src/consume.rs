//! Many records of a consumer's partitions in one call of librdkafka's
//! `rd_kafka_consume_batch_queue`, from a queue of the caller's own.
//!
//! rust-rdkafka's `BaseConsumer::poll` returns one record per call, and per call it and
//! librdkafka read the clock two or three times: a quarter of the importer's consumer
//! thread in a snapshot (docs/benchmarks.md, "Changes of 2026-12-07 (sixth
//! session)"). The batch call reads it once per batch.
//!
//! The batch call is not made on the consumer's own queue: there, it would serve a
//! rebalance itself and, with no rebalance callback set (rust-rdkafka uses events),
//! unassign by force, bypassing the consumer's context. Instead each assigned
//! partition's fetch queue is forwarded to a [`BatchQueue`] ([`BatchQueue::forward`])
//! before the partitions are assigned, and the consumer's queue is still polled for the
//! group's events. What librdkafka (2.12) does with such a forward, which the caller
//! relies on:
//!
//! - a forward set by the application is kept when the partition's fetch starts, so it
//!   must be set before `assign`;
//! - stopping the partition's fetch (an unassign) clears it, but the application's
//!   claim on the partition's queue stays: assigned again without a forward, the
//!   partition's records reach neither the consumer's queue nor this one (they wait in
//!   the partition's own queue until a forward is set, and then come in order). And
//!   the stop is done on librdkafka's thread, later: it may clear a forward set just
//!   before the next assignment. So the caller sets the forward before every
//!   assignment and again after it (forwarding a forwarded partition again changes
//!   nothing), and a forward that cannot be set is an error;
//! - records of a partition fetched before its last stop or seek carry an older version
//!   and the batch call drops them;
//! - only records (and a partition's errors, as records with an error) come through the
//!   forward: rebalances, commits and client errors stay on the consumer's queue.

use std::ffi::{c_int, CStr, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::Message;

/// A queue made with `rd_kafka_queue_new` on a consumer's client, destroyed on drop.
///
/// It holds the consumer, so the queue is destroyed before the client it points at
/// (librdkafka forbids a queue outliving its client), whatever the caller drops first.
/// Fields drop in declaration order.
pub struct BatchQueue<C: ConsumerContext + 'static> {
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    consumer: Arc<BaseConsumer<C>>,
}

// SAFETY: librdkafka's queues may be used and destroyed from any thread (each has its
// own lock); the handle is only a pointer to one, and the consumer is `Send`.
#[allow(unsafe_code)]
unsafe impl<C: ConsumerContext + 'static> Send for BatchQueue<C> {}
// SAFETY: as above; every method takes the queue's own lock inside librdkafka.
#[allow(unsafe_code)]
unsafe impl<C: ConsumerContext + 'static> Sync for BatchQueue<C> {}

/// One record taken from a [`BatchQueue`], valid during the call that gives it.
pub struct Consumed<'a> {
    /// The record's topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key, if it has one.
    pub key: Option<&'a [u8]>,
    /// Its payload, if it has one (a tombstone has none).
    pub payload: Option<&'a [u8]>,
    /// Set when this is not a record but an error of the partition (the payload may
    /// then hold librdkafka's text of it).
    pub error: Option<RDKafkaErrorCode>,
    /// The message as librdkafka handed it out, for what is read only when asked for
    /// (time, headers): librdkafka's own pointer, not one made from a reference to
    /// the public part, because reading headers writes librdkafka's private part.
    raw: *const rdsys::rd_kafka_message_t,
    message: PhantomData<&'a Message>,
}

impl std::fmt::Debug for Consumed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumed")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("key", &self.key)
            .field("payload", &self.payload)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<'a> Consumed<'a> {
    /// The record's timestamp (milliseconds since the epoch), when it has one.
    pub fn timestamp_ms(&self) -> Option<i64> {
        let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: the message is live for 'a (see `consume`), in the bindings' layout
        // (checked in lib.rs); librdkafka only reads it and writes the type.
        #[allow(unsafe_code)]
        let at = unsafe { rdsys::rd_kafka_message_timestamp(self.raw(), &mut kind) };
        // -1 is Kafka's "no timestamp", as rust-rdkafka reads it too.
        (kind != rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE && at != -1)
            .then_some(at)
    }

    /// The value of the record's last header named `name`: `None` when it has no such
    /// header, an empty slice for one with no value.
    pub fn header(&self, name: &CStr) -> Option<&'a [u8]> {
        let mut headers: *mut rdsys::rd_kafka_headers_t = std::ptr::null_mut();
        // SAFETY: the message is live for 'a; librdkafka parses its headers once into
        // memory the message owns (outside the public struct) and returns a pointer
        // to them, or an error code and no pointer when it has none.
        #[allow(unsafe_code)]
        let found = unsafe { rdsys::rd_kafka_message_headers(self.raw(), &mut headers) };
        if found != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
            return None;
        }
        let mut value: *const std::ffi::c_void = std::ptr::null();
        let mut size: usize = 0;
        // SAFETY: `headers` belongs to the live message; the name is a valid C string;
        // librdkafka points `value` at the header's bytes, owned by the headers.
        #[allow(unsafe_code)]
        let found = unsafe {
            rdsys::rd_kafka_header_get_last(headers, name.as_ptr(), &mut value, &mut size)
        };
        if found != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return None;
        }
        if value.is_null() {
            return Some(&[]);
        }
        // SAFETY: `value` points at `size` bytes owned by the message's headers, which
        // live as long as the message ('a).
        #[allow(unsafe_code)]
        Some(unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) })
    }

    fn raw(&self) -> *const rdsys::rd_kafka_message_t {
        self.raw
    }
}

impl<C: ConsumerContext + 'static> BatchQueue<C> {
    /// A new queue on `consumer`'s client.
    pub fn new(consumer: Arc<BaseConsumer<C>>) -> Result<Self, KafkaError> {
        // SAFETY: the pointer is `consumer`'s live client, kept alive by the queue;
        // librdkafka returns a new queue handle (never null in practice; checked).
        #[allow(unsafe_code)]
        let queue = unsafe { rdsys::rd_kafka_queue_new(consumer.client().native_ptr()) };
        NonNull::new(queue)
            .map(|queue| BatchQueue { queue, consumer })
            .ok_or(KafkaError::ClientCreation(
                "librdkafka made no queue".to_owned(),
            ))
    }

    /// The consumer the queue was made on.
    pub fn consumer(&self) -> &Arc<BaseConsumer<C>> {
        &self.consumer
    }

    /// Forwards the fetch queue of `topic`'s `partition` on the queue's consumer to this
    /// queue. Called before the partition is assigned, and again after.
    pub fn forward(&self, topic: &str, partition: i32) -> Result<(), KafkaError> {
        let consumer = &self.consumer;
        let c_topic = CString::new(topic)?;
        // SAFETY: the pointer is `consumer`'s live client and the name a valid C string
        // that librdkafka copies; it returns a new handle on the partition's fetch queue
        // (making the partition's state if needed), or null for a producer.
        #[allow(unsafe_code)]
        let partition_queue = unsafe {
            rdsys::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                c_topic.as_ptr(),
                partition,
            )
        };
        let Some(partition_queue) = NonNull::new(partition_queue) else {
            return Err(KafkaError::Subscription(format!(
                "librdkafka gave no queue for {topic}[{partition}]"
            )));
        };
        // SAFETY: both handles are live; the forward is set on the partition's queue
        // itself (holding its own reference to this queue), so the partition's handle
        // can go at once; it was made above and is destroyed once, here.
        #[allow(unsafe_code)]
        unsafe {
            rdsys::rd_kafka_queue_forward(partition_queue.as_ptr(), self.queue.as_ptr());
            rdsys::rd_kafka_queue_destroy(partition_queue.as_ptr());
        }
        Ok(())
    }

    /// Takes up to `max` records, waiting up to `wait` for the first, and gives each to
    /// `each` in the order queued (each partition's in offset order). Returns how many
    /// were taken.
    ///
    /// librdkafka's batch call waits for the whole batch until its timeout, so the
    /// records already there are taken with no wait, and only when there are none is
    /// the wait for one record, then those that came with it.
    pub fn consume(&self, wait: Duration, max: usize, mut each: impl FnMut(Consumed<'_>)) -> usize {
        if max == 0 {
            return 0;
        }
        let mut taken: Vec<*mut Message> = vec![std::ptr::null_mut(); max];
        let mut n = self.take(&mut taken, Duration::ZERO);
        if n == 0 && !wait.is_zero() {
            n = self.take(&mut taken[..1], wait);
            if n == 1 && max > 1 {
                n += self.take(&mut taken[1..], Duration::ZERO);
            }
        }
        let messages = Taken(&taken[..n]);
        for &message in messages.0 {
            // SAFETY: librdkafka returned this message, in the layout checked in lib.rs;
            // it stays valid until destroyed, which `Taken` does after this loop (or on
            // unwind).
            #[allow(unsafe_code)]
            let m = unsafe { &*message };
            each(consumed(m, message.cast_const()));
        }
        n
    }

    /// How many of librdkafka's ops wait in the queue: records, a partition's errors,
    /// and the version barriers of fetches starting or stopping.
    pub fn len(&self) -> usize {
        // SAFETY: the queue is live; librdkafka reads its length under its lock.
        #[allow(unsafe_code)]
        unsafe {
            rdsys::rd_kafka_queue_length(self.queue.as_ptr())
        }
    }

    /// Whether no op waits in the queue.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One batch call into `into`, waiting up to `wait`.
    fn take(&self, into: &mut [*mut Message], wait: Duration) -> usize {
        let wait_ms = c_int::try_from(wait.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: the queue is live; `into` has room for `into.len()` pointers, which
        // librdkafka fills with messages the caller destroys.
        #[allow(unsafe_code)]
        let n = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                wait_ms,
                into.as_mut_ptr().cast::<*mut rdsys::rd_kafka_message_t>(),
                into.len(),
            )
        };
        // -1 only for a queue that is not a consumer's; none is taken then.
        usize::try_from(n).unwrap_or(0)
    }
}

/// Borrows a message's fields (`raw`: librdkafka's pointer to it).
fn consumed(m: &Message, raw: *const Message) -> Consumed<'_> {
    let bytes = |ptr: *mut std::ffi::c_void, len: usize| -> Option<&[u8]> {
        // SAFETY: librdkafka's key and payload pointers, when not null, point at `len`
        // bytes that live as long as the message.
        #[allow(unsafe_code)]
        (!ptr.is_null()).then(|| unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
    };
    let topic = if m.rkt.is_null() {
        ""
    } else {
        // SAFETY: the message's topic handle is not null and lives as long as the
        // message; its name is a C string librdkafka keeps for the handle's life.
        #[allow(unsafe_code)]
        let name = unsafe { CStr::from_ptr(rdsys::rd_kafka_topic_name(m.rkt)) };
        // Kafka's topic names are ASCII.
        name.to_str().unwrap_or("")
    };
    Consumed {
        topic,
        partition: m.partition,
        offset: m.offset,
        key: bytes(m.key, m.key_len),
        payload: bytes(m.payload, m.len),
        // By librdkafka's name for it (`Unknown` for a code this build does not name),
        // with librdkafka's text in the payload.
        error: (m.err != crate::NO_ERROR).then(|| crate::error_code(m.err)),
        raw: raw.cast::<rdsys::rd_kafka_message_t>(),
        message: PhantomData,
    }
}

/// Messages taken from librdkafka, destroyed on drop.
struct Taken<'a>(&'a [*mut Message]);

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        for &message in self.0 {
            // SAFETY: each was returned by the batch call and is destroyed once, here.
            #[allow(unsafe_code)]
            unsafe {
                rdsys::rd_kafka_message_destroy(message.cast::<rdsys::rd_kafka_message_t>())
            };
        }
    }
}

impl<C: ConsumerContext + 'static> Drop for BatchQueue<C> {
    fn drop(&mut self) {
        // SAFETY: the handle came from `rd_kafka_queue_new` and is destroyed once, here,
        // before the client (`self.consumer` drops after this). Partitions still forwarded to it
        // keep the queue itself alive and librdkafka drops what reaches it after this.
        #[allow(unsafe_code)]
        unsafe {
            rdsys::rd_kafka_queue_destroy(self.queue.as_ptr())
        };
    }
}
