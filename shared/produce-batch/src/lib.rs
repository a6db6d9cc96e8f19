//! Many records to one Kafka topic in one call of librdkafka's `rd_kafka_produce_batch`.
//!
//! rust-rdkafka's `BaseProducer::send` hands librdkafka one record per call of
//! `rd_kafka_producev`, by topic name: per record it copies the name into a new C string,
//! and librdkafka takes the client's lock to find the topic by that name, takes the
//! topic's lock and reads the clock twice. In a snapshot that was about 0.15–0.2 µs of
//! Ferry's CPU per row, a quarter of the exporter's own (docs/benchmarks.md, "Changes of
//! 2026-12-07 (fifth session)").
//! [`BatchProducer::send_batch`] does those once per call, for a topic handle made once.
//!
//! The consumer's side, [`BatchQueue`], takes many records in one call of
//! `rd_kafka_consume_batch_queue` (module `consume`).
//!
//! This is the workspace's one crate with unsafe code (docs/architecture.md, "Decision:
//! one module of unsafe code, for librdkafka's batch produce"); every unsafe block says
//! why it is sound.
//!
//! What a call guarantees, which the exporter's stamper relies on (DESIGN.md §4: VSNs
//! strictly increase inside every partition):
//!
//! - Records are enqueued in the order given, each to the partition it names, and a
//!   record is never enqueued after a refused record of its partition. librdkafka
//!   refuses a record of a batch when its local queue is full, and then every later
//!   record of the call too; when the topic is unknown or in error, and then every
//!   record; when the partition does not exist, and then every record of that
//!   partition (a negative one is refused here, before librdkafka); and when the record is over `message.max.bytes`, and then it goes on
//!   with the next. So a record that could be over that size never goes into a batch:
//!   it is sent alone, with `BaseProducer::send`, once every record before it was
//!   enqueued.
//! - Each record's delivery report reaches the producer's context as for a record sent
//!   with `send`, with the record's opaque.
//! - librdkafka copies the key and the payload (`RD_KAFKA_MSG_F_COPY`): the caller's
//!   buffers are free again when the call returns.

mod consume;
pub use consume::{BatchQueue, Consumed};

use std::ffi::{c_int, c_void, CString};
use std::ptr::NonNull;

use rdkafka::bindings as rdsys;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientConfig;

/// librdkafka's `RD_KAFKA_PARTITION_UA` (a C macro, not in the bindings): with
/// `RD_KAFKA_MSG_F_PARTITION` the partition argument of a batch is unused.
const PARTITION_UNASSIGNED: i32 = -1;

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// Room for librdkafka's framing of one record, which `message.max.bytes` counts with
/// the key and the payload (`RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`: 36 bytes in librdkafka
/// 2.12), with a margin. A record this close to the limit is sent alone.
const RECORD_OVERHEAD: usize = 128;

/// One record of a batch.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// The partition (the caller chooses it; librdkafka's partitioner is not used, and a
    /// negative partition is refused).
    pub partition: i32,
    /// The key (an empty slice is an empty key, not a null one, as with
    /// `BaseRecord::key`).
    pub key: &'a [u8],
    /// The payload.
    pub payload: &'a [u8],
    /// Given back with the record's delivery report.
    pub opaque: usize,
}

/// A [`ThreadedProducer`] and a librdkafka topic handle for each of its topics.
///
/// Fields drop in declaration order: the topic handles go before the producer that
/// they belong to.
pub struct BatchProducer<C: ProducerContext<DeliveryOpaque = usize> + 'static> {
    topics: Vec<Topic>,
    scratch: Scratch,
    max_message_bytes: usize,
    producer: ThreadedProducer<C>,
}

/// A topic's name and librdkafka's handle of it, destroyed on drop.
struct Topic {
    name: String,
    handle: NonNull<rdsys::rd_kafka_topic_t>,
}

// SAFETY: librdkafka's topic handles may be used and destroyed from any thread (its
// whole API is thread-safe; the handle is reference-counted under the topic's lock).
#[allow(unsafe_code)]
unsafe impl Send for Topic {}
// SAFETY: as above; `&Topic` only reads the pointer.
#[allow(unsafe_code)]
unsafe impl Sync for Topic {}

impl Drop for Topic {
    fn drop(&mut self) {
        // SAFETY: the handle came from `rd_kafka_topic_new` and is destroyed once, here;
        // the client it belongs to is still alive (`BatchProducer` drops its topics
        // before its producer).
        #[allow(unsafe_code)]
        unsafe {
            rdsys::rd_kafka_topic_destroy(self.handle.as_ptr())
        };
    }
}

/// `rd_kafka_message_t` with `err` as the C `int` it is. The bindings type it as a Rust
/// enum, and librdkafka may write a code the enum does not name (a topic's error is
/// the broker's code as it came): reading that through the enum would be undefined
/// behaviour, reading an `i32` is not.
#[repr(C)]
struct Message {
    err: i32,
    rkt: *mut rdsys::rd_kafka_topic_t,
    partition: i32,
    payload: *mut c_void,
    len: usize,
    key: *mut c_void,
    key_len: usize,
    offset: i64,
    private: *mut c_void,
}

// The same layout as the bindings' struct, which librdkafka reads and writes.
const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    type Bindings = rdsys::rd_kafka_message_t;
    assert!(size_of::<Message>() == size_of::<Bindings>());
    assert!(align_of::<Message>() == align_of::<Bindings>());
    assert!(offset_of!(Message, err) == offset_of!(Bindings, err));
    assert!(offset_of!(Message, rkt) == offset_of!(Bindings, rkt));
    assert!(offset_of!(Message, partition) == offset_of!(Bindings, partition));
    assert!(offset_of!(Message, payload) == offset_of!(Bindings, payload));
    assert!(offset_of!(Message, len) == offset_of!(Bindings, len));
    assert!(offset_of!(Message, key) == offset_of!(Bindings, key));
    assert!(offset_of!(Message, key_len) == offset_of!(Bindings, key_len));
    assert!(offset_of!(Message, offset) == offset_of!(Bindings, offset));
    assert!(offset_of!(Message, private) == offset_of!(Bindings, _private));
};

/// librdkafka's "no error".
const NO_ERROR: i32 = rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR as i32;

/// The error of a record's code (a refused record's, or a consumed partition's error):
/// librdkafka's name for it, or [`RDKafkaErrorCode::Unknown`] for a code this build of
/// librdkafka does not name (a broker's newer code, as it came). The code is checked
/// against the bindings' values, never cast into their enum.
fn error_code(code: i32) -> RDKafkaErrorCode {
    rdsys::rd_kafka_resp_err_t::try_from(code)
        .map_or(RDKafkaErrorCode::Unknown, RDKafkaErrorCode::from)
}

/// The records of one call in librdkafka's layout. It is emptied before every call
/// returns, so it holds no pointer between calls.
struct Scratch(Vec<Message>);

// SAFETY: between calls the vector is empty (see above); during a call it is reached
// only through `&mut BatchProducer`.
#[allow(unsafe_code)]
unsafe impl Send for Scratch {}
// SAFETY: `&Scratch` is never used to read or write its records.
#[allow(unsafe_code)]
unsafe impl Sync for Scratch {}

impl<C: ProducerContext<DeliveryOpaque = usize> + 'static> BatchProducer<C> {
    /// Wraps `producer`, made from `config`, with a handle for each of `topics`
    /// (addressed by their index in [`BatchProducer::send_batch`]). The handles take
    /// the producer's topic settings (its default topic configuration).
    pub fn new(
        producer: ThreadedProducer<C>,
        config: &ClientConfig,
        topics: &[String],
    ) -> Result<Self, KafkaError> {
        let rk = producer.client().native_ptr();
        let mut handles = Vec::with_capacity(topics.len());
        for name in topics {
            let c_name = CString::new(name.as_str())?;
            // SAFETY: `rk` is the live client of `producer`; the name is a valid C string
            // that librdkafka copies; a null configuration means the client's default
            // topic configuration.
            #[allow(unsafe_code)]
            let handle =
                unsafe { rdsys::rd_kafka_topic_new(rk, c_name.as_ptr(), std::ptr::null_mut()) };
            let Some(handle) = NonNull::new(handle) else {
                // SAFETY: reads the calling thread's last librdkafka error.
                #[allow(unsafe_code)]
                let code = unsafe { rdsys::rd_kafka_last_error() };
                return Err(KafkaError::MessageProduction(RDKafkaErrorCode::from(code)));
            };
            handles.push(Topic {
                name: name.clone(),
                handle,
            });
        }
        Ok(BatchProducer {
            topics: handles,
            scratch: Scratch(Vec::new()),
            max_message_bytes: max_message_bytes(config),
            producer,
        })
    }

    /// The producer, for everything but sending batches (flush, metadata).
    pub fn producer(&self) -> &ThreadedProducer<C> {
        &self.producer
    }

    /// Enqueues `records` for topic `topic` (an index into the topics given to
    /// [`BatchProducer::new`]), in order.
    ///
    /// Returns how many records were enqueued, from the first: all of them, or fewer when
    /// librdkafka's local queue is full (serve delivery reports, then send the rest).
    /// `Err((i, error))`: record `i` was refused for another reason (an unknown topic or
    /// partition, a negative partition, a record over `message.max.bytes`). Every record before it was
    /// enqueued; no later record of its partition was, and the caller must not go on
    /// (a later record of another partition may have been, when `i`'s partition does not
    /// exist).
    pub fn send_batch(
        &mut self,
        topic: usize,
        records: &[Record<'_>],
    ) -> Result<usize, (usize, KafkaError)> {
        let Some(handle) = self.topics.get(topic).map(|t| t.handle) else {
            return Err((
                0,
                KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopic),
            ));
        };
        let limit = self.max_message_bytes;
        // A record that may be over message.max.bytes, or with a negative partition
        // (-1 would be librdkafka's partitioner, other negatives a refusal that
        // librdkafka leaks), is not put in a batch.
        let fits = |r: &Record<'_>| {
            r.partition >= 0 && r.key.len() + r.payload.len() + RECORD_OVERHEAD <= limit
        };
        let mut done = 0;
        while done < records.len() {
            let rest = &records[done..];
            let run = rest.iter().position(|r| !fits(r)).unwrap_or(rest.len());
            if run > 0 {
                match self.enqueue(handle, &rest[..run]) {
                    Ok(n) if n == run => done += n,
                    Ok(n) => return Ok(done + n),
                    Err((i, e)) => return Err((done + i, e)),
                }
                continue;
            }
            let r = &rest[0];
            if r.partition < 0 {
                return Err((
                    done,
                    KafkaError::MessageProduction(RDKafkaErrorCode::UnknownPartition),
                ));
            }
            // A record that may be over message.max.bytes: alone, so that a refusal
            // leaves nothing after it enqueued.
            let record = BaseRecord::with_opaque_to(self.topics[topic].name.as_str(), r.opaque)
                .partition(r.partition)
                .key(r.key)
                .payload(r.payload);
            match self.producer.send(record) {
                Ok(()) => done += 1,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Ok(done)
                }
                Err((e, _)) => return Err((done, e)),
            }
        }
        Ok(done)
    }

    /// One call of `rd_kafka_produce_batch` for `records`, none of which can be over
    /// `message.max.bytes`. Returns how many were enqueued (fewer than all only when
    /// the local queue filled), or the first refusal for another reason.
    fn enqueue(
        &mut self,
        handle: NonNull<rdsys::rd_kafka_topic_t>,
        records: &[Record<'_>],
    ) -> Result<usize, (usize, KafkaError)> {
        let mut done = 0;
        // A call takes at most c_int records.
        for chunk in records.chunks(c_int::MAX as usize) {
            let scratch = &mut self.scratch.0;
            scratch.clear();
            scratch.extend(chunk.iter().map(|r| Message {
                err: NO_ERROR,
                rkt: std::ptr::null_mut(),
                partition: r.partition,
                payload: r.payload.as_ptr().cast_mut().cast::<c_void>(),
                len: r.payload.len(),
                key: r.key.as_ptr().cast_mut().cast::<c_void>(),
                key_len: r.key.len(),
                offset: 0,
                // How rust-rdkafka passes a `usize` opaque, and reads it back in the
                // delivery report (`IntoOpaque for usize`).
                private: std::ptr::without_provenance_mut(r.opaque),
            }));
            let count = c_int::try_from(scratch.len()).unwrap_or(c_int::MAX);
            // SAFETY: `handle` is a live topic handle of this producer's client (the
            // topics drop before the producer). `scratch` holds `count` initialised
            // records whose key and payload point into slices borrowed for this call;
            // with RD_KAFKA_MSG_F_COPY librdkafka copies both before returning and keeps
            // no pointer into them (nor into `scratch`, which it only writes `err` of).
            // `Message` has the bindings' layout (checked above). RD_KAFKA_MSG_F_PARTITION:
            // each record's own partition, never negative (`send_batch` checks).
            #[allow(unsafe_code)]
            unsafe {
                rdsys::rd_kafka_produce_batch(
                    handle.as_ptr(),
                    PARTITION_UNASSIGNED,
                    rdsys::RD_KAFKA_MSG_F_COPY | rdsys::RD_KAFKA_MSG_F_PARTITION,
                    scratch.as_mut_ptr().cast::<rdsys::rd_kafka_message_t>(),
                    count,
                )
            };
            let refused = scratch.iter().position(|m| m.err != NO_ERROR);
            let outcome = match refused {
                None => None,
                Some(i) => {
                    let code = error_code(scratch[i].err);
                    // After a full queue librdkafka refuses every later record; one
                    // enqueued after it would break the order, so it is an error then.
                    let later_enqueued = scratch[i + 1..].iter().any(|m| m.err == NO_ERROR);
                    Some((i, code, later_enqueued))
                }
            };
            scratch.clear();
            match outcome {
                None => done += chunk.len(),
                Some((i, RDKafkaErrorCode::QueueFull, false)) => return Ok(done + i),
                Some((i, code, _)) => {
                    return Err((done + i, KafkaError::MessageProduction(code)));
                }
            }
        }
        Ok(done)
    }
}

/// `message.max.bytes` of `config`, librdkafka's default when it is not set (or not a
/// number: the producer was made from the same configuration, so it was valid).
fn max_message_bytes(config: &ClientConfig) -> usize {
    config
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_named_and_one_librdkafka_does_not_name_is_unknown() {
        assert_eq!(error_code(-184), RDKafkaErrorCode::QueueFull);
        assert_eq!(error_code(10), RDKafkaErrorCode::MessageSizeTooLarge);
        assert_eq!(error_code(-190), RDKafkaErrorCode::UnknownPartition);
        assert_eq!(error_code(29), RDKafkaErrorCode::TopicAuthorizationFailed);
        // Codes no refusal comes with are named too: a consumed partition's errors.
        assert_eq!(error_code(-140), RDKafkaErrorCode::AutoOffsetReset);
        assert_eq!(error_code(1), RDKafkaErrorCode::OffsetOutOfRange);
        assert_eq!(error_code(31_337), RDKafkaErrorCode::Unknown);
    }

    #[test]
    fn the_size_limit_is_read_from_the_configuration_or_is_librdkafkas_default() {
        let mut c = ClientConfig::new();
        assert_eq!(max_message_bytes(&c), 1_000_000);
        c.set("message.max.bytes", " 2000 ");
        assert_eq!(max_message_bytes(&c), 2000);
    }
}
