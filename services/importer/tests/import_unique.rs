//! Unique keys besides the primary key (DESIGN.md §4a), against real PostgreSQL and the
//! local broker. The stream of such a table has one partition (its order is total); the
//! importer applies its events in exact order, so each case below lands in one batch and
//! would hit a unique violation if the importer collapsed or reordered them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use anyhow::Result;
use common::*;
use ferry_shared::envelope::Op;

const UNIQUE_DDL: &str = "CREATE TABLE t (id bigint PRIMARY KEY, c1 text UNIQUE, c2 integer)";

fn v(email: Option<&str>, n: i32) -> Option<Vec<Option<String>>> {
    Some(vec![email.map(str::to_owned), Some(n.to_string())])
}

async fn unique_case(
    prefix: &str,
    snapshot: &[(i64, Option<&str>)],
    steps: &[(Op, i64, Option<&str>)],
) -> Result<()> {
    let mut f = Fixture::new(prefix, UNIQUE_DDL, UNIQUE_DDL, 1, 10_000).await?;
    for (id, email) in snapshot {
        f.event(Op::Read, *id, v(*email, 0)).await?;
    }
    for (i, (op, id, email)) in steps.iter().enumerate() {
        let values = if *op == Op::Delete {
            None
        } else {
            v(*email, i as i32 + 1)
        };
        f.event(*op, *id, values).await?;
    }
    let importer = f.start();
    f.wait_caught_up().await?;
    importer.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_delete_then_insert_reusing_the_value() -> Result<()> {
    unique_case(
        "imp_u_del_ins",
        &[(1, Some("x")), (2, Some("y"))],
        &[
            (Op::Delete, 1, None),
            (Op::Create, 3, Some("x")),
            (Op::Update, 3, Some("x")),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_update_then_insert_reusing_the_old_value() -> Result<()> {
    unique_case(
        "imp_u_upd_ins",
        &[(1, Some("x"))],
        &[
            (Op::Update, 1, Some("y")),
            (Op::Create, 2, Some("x")),
            (Op::Update, 1, Some("z")),
            (Op::Create, 3, Some("y")),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_delete_then_update_taking_the_value() -> Result<()> {
    unique_case(
        "imp_u_del_upd",
        &[(1, Some("x")), (2, Some("y"))],
        &[
            (Op::Delete, 1, None),
            (Op::Update, 2, Some("x")),
            (Op::Create, 1, Some("y")),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_update_then_update_swapping_values() -> Result<()> {
    unique_case(
        "imp_u_swap",
        &[(1, Some("x")), (2, Some("y")), (3, Some("z"))],
        &[
            (Op::Update, 1, Some("tmp")),
            (Op::Update, 2, Some("x")),
            (Op::Update, 1, Some("y")),
            // a three-way rotation in one run of updates
            (Op::Update, 3, Some("tmp")),
            (Op::Update, 1, Some("z")),
            (Op::Update, 3, Some("y")),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_null_values_coexist_and_move() -> Result<()> {
    unique_case(
        "imp_u_null",
        &[(1, None), (2, None), (3, Some("x"))],
        &[
            (Op::Create, 4, None),
            (Op::Update, 3, None),
            (Op::Update, 1, Some("x")),
            (Op::Delete, 2, None),
            (Op::Create, 2, None),
            (Op::Update, 4, Some("w")),
        ],
    )
    .await
}
