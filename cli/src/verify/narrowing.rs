//! [`Narrowing`]: the search of a differing table for the keys that differ.

use std::collections::HashSet;

use ferry_shared::catalog::TableName;

use super::plan::{KeyRange, Plan};
use super::side::{KeyedRow, Side, Sums};
use super::{DifferingKey, KeyDifference, VerifyError, VerifyOptions, FANOUT, MAX_RANGES};

/// How a narrowing ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NarrowingEnd {
    /// Every differing key is listed.
    Complete,
    /// More keys differ than `max_keys`.
    KeyLimit,
    /// [`MAX_RANGES`] ranges were compared before the search ended.
    RangeBudget,
}

/// The narrowing of one differing table to keys.
pub(super) struct Narrowing<'a> {
    pub(super) table: &'a TableName,
    pub(super) left: &'a Side,
    pub(super) right: &'a Side,
    pub(super) left_plan: &'a Plan,
    pub(super) right_plan: &'a Plan,
    pub(super) opts: &'a VerifyOptions,
}

impl Narrowing<'_> {
    /// Differing keys in key order, and how the search ended.
    pub(super) async fn run(
        &self,
        left_sums: Sums,
        right_sums: Sums,
    ) -> Result<(Vec<DifferingKey>, NarrowingEnd), VerifyError> {
        let mut ranges = 0;
        let leaf_rows = self.opts.leaf_rows.max(1);
        let mut keys = Vec::new();
        // Depth first, in key order: children are pushed last first.
        let mut pending = vec![(KeyRange::ALL, left_sums.rows, right_sums.rows)];
        while let Some((range, left_rows, right_rows)) = pending.pop() {
            if left_rows.max(right_rows) <= leaf_rows {
                let (left_list, right_list) = tokio::try_join!(
                    self.left.rows(self.table, self.left_plan, &range),
                    self.right.rows(self.table, self.right_plan, &range)
                )?;
                for difference in diff_rows(&self.left_plan.key_names, left_list, right_list) {
                    if keys.len() >= self.opts.max_keys {
                        return Ok((keys, NarrowingEnd::KeyLimit));
                    }
                    keys.push(difference);
                }
                continue;
            }
            // Split by the side with more rows here: its sub-ranges get fewer rows each.
            let (side, plan, rows) = if left_rows >= right_rows {
                (self.left, self.left_plan, left_rows)
            } else {
                (self.right, self.right_plan, right_rows)
            };
            let step = rows.div_ceil(FANOUT);
            let bounds = side.boundaries(self.table, plan, &range, step).await?;
            let mut children = Vec::with_capacity(bounds.len() + 1);
            let mut lower = range.lower.clone();
            for bound in bounds {
                children.push(KeyRange {
                    lower,
                    upper: Some(bound.clone()),
                });
                lower = Some(bound);
            }
            children.push(KeyRange {
                lower,
                upper: range.upper.clone(),
            });
            let mut differing = Vec::new();
            for child in children {
                ranges += 1;
                if ranges > MAX_RANGES {
                    return Ok((keys, NarrowingEnd::RangeBudget));
                }
                let (l, r) = tokio::try_join!(
                    self.left.checksum(self.table, self.left_plan, &child),
                    self.right.checksum(self.table, self.right_plan, &child)
                )?;
                if l != r {
                    differing.push((child, l.rows, r.rows));
                }
            }
            pending.extend(differing.into_iter().rev());
        }
        Ok((keys, NarrowingEnd::Complete))
    }
}

/// Compares two key-ordered row lists of the same range. Both lists are in the same
/// order, so a merge walk finds each difference; a key is known to be on the other side
/// through a set, since key texts don't sort like the keys.
pub(super) fn diff_rows(
    key_names: &[String],
    left: Vec<KeyedRow>,
    right: Vec<KeyedRow>,
) -> Vec<DifferingKey> {
    let right_keys: HashSet<Vec<String>> = right.iter().map(|(k, _)| k.clone()).collect();
    let mut out = Vec::new();
    let mut left = left.into_iter().peekable();
    let mut right = right.into_iter().peekable();
    loop {
        match (left.peek(), right.peek()) {
            (Some((lk, lh)), Some((rk, rh))) => {
                if lk == rk {
                    if lh != rh {
                        out.push(differing(key_names, lk, KeyDifference::Different));
                    }
                    left.next();
                    right.next();
                } else if right_keys.contains(lk) {
                    // The left key comes later on the right: the right's head is not on
                    // the left.
                    out.push(differing(key_names, rk, KeyDifference::MissingOnLeft));
                    right.next();
                } else {
                    out.push(differing(key_names, lk, KeyDifference::MissingOnRight));
                    left.next();
                }
            }
            (Some((lk, _)), None) => {
                out.push(differing(key_names, lk, KeyDifference::MissingOnRight));
                left.next();
            }
            (None, Some((rk, _))) => {
                out.push(differing(key_names, rk, KeyDifference::MissingOnLeft));
                right.next();
            }
            (None, None) => break,
        }
    }
    out
}

fn differing(key_names: &[String], values: &[String], difference: KeyDifference) -> DifferingKey {
    DifferingKey {
        key: format!("({})=({})", key_names.join(", "), values.join(", ")),
        difference,
    }
}
