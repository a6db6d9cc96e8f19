//! Change events of the test table `public.t`, keyed by its `bigint` id, as the
//! importer's tests produce them.

use ferry_shared::envelope::{ChangeEvent, Op, SourceInfo};
use ferry_shared::position::Vsn;
use ferry_shared::value::Datum;

/// `op` on row `id` of `public.t` at `vsn`: `before` is kept for updates and deletes
/// only (as a source sends it), `after` is the new row (none for deletes).
pub fn on_t(
    op: Op,
    id: i64,
    vsn: u64,
    before: Option<Vec<Datum>>,
    after: Option<Vec<Datum>>,
) -> ChangeEvent {
    ChangeEvent {
        key: vec![Datum::Long(id)],
        before: before.filter(|_| matches!(op, Op::Update | Op::Delete)),
        after,
        op,
        ts_ms: 0,
        vsn: Vsn(vsn),
        source: SourceInfo {
            db: "src".into(),
            schema: "public".into(),
            table: "t".into(),
            snapshot: op == Op::Read,
            lsn_or_scn: "0/0".into(),
            txid: None,
            commit_ts_ms: 0,
        },
    }
}
