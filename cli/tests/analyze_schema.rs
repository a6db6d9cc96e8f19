//! `ferry analyze-schema` against a real source: a table with a column type that cannot
//! round-trip gives one clear issue naming schema.table.column and the type, and a
//! non-zero exit; a ready source gives the per-table report and exit 0. `ferry prepare
//! source` shows, then makes, exactly the replica identity changes the check asks for.
//! On schema files (written here in pg_dump's format, and exported from a real source):
//! each YugabyteDB issue is reported exactly once with its fix, the JSON report's
//! structure and counts agree, the HTML page names every object, and an edit that
//! removes a problem removes exactly its issue.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::process::{Command, Output};

use ferry_testkit::{free_port, unique_name, Stack};

async fn source_with(sql: &str) -> String {
    let stack = Stack::get();
    let db = stack.source.create_database("analyze").await.unwrap();
    let client = stack.source.connect(&db).await.unwrap();
    client.batch_execute(sql).await.unwrap();
    db
}

fn analyze(db: &str) -> Output {
    ferry(db, &["analyze-schema"])
}

/// Runs `ferry ARGS` with a configuration whose databases are all `db` on the source
/// cluster.
fn ferry(db: &str, args: &[&str]) -> Output {
    let stack = Stack::get();
    let listen = format!("127.0.0.1:{}", free_port());
    let text = stack.config_toml(&unique_name("analyze"), db, db, db, &listen);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, text).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FERRY_") {
            command.env_remove(name);
        }
    }
    command
        .arg("--config")
        .arg(&path)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn an_unsupported_column_type_is_one_clear_error_and_a_failure() {
    let db = source_with(
        "CREATE TABLE good (id int PRIMARY KEY, note text);
         ALTER TABLE good REPLICA IDENTITY FULL;
         CREATE TABLE refs (id int PRIMARY KEY, owner regclass);
         ALTER TABLE refs REPLICA IDENTITY FULL;",
    )
    .await;
    let output = analyze(&db);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    // The report groups the source's problems under "source readiness", each once,
    // with its fix on the next line.
    assert!(stdout.contains("source readiness (1 issue)"), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let problems: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("has type regclass"))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(problems.len(), 1, "exactly one problem: {stdout}");
    assert!(
        lines[problems[0]].contains("column public.refs.owner has type regclass"),
        "{stdout}"
    );
    assert!(
        lines[problems[0] + 1].trim_start().starts_with("fix: ")
            && lines[problems[0] + 1].contains("store the object's name as text instead"),
        "{stdout}"
    );
    assert!(stderr.contains("the source is not ready"), "{stderr}");
}

#[tokio::test]
async fn a_ready_source_gets_its_report() {
    let db = source_with(
        "CREATE TABLE orders (id bigint PRIMARY KEY, total numeric(12,2), at timestamptz, tags text[]);
         ALTER TABLE orders REPLICA IDENTITY FULL;",
    )
    .await;
    let output = analyze(&db);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("1 table(s) selected"), "{stdout}");
    assert!(
        stdout.contains("public.orders (primary key: id)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("decimal (special values as text)"),
        "{stdout}"
    );
    assert!(stdout.contains("array of string"), "{stdout}");
}

#[tokio::test]
async fn prepare_source_shows_then_applies_exactly_the_replica_identity_changes() {
    let db = source_with(
        r#"CREATE TABLE plain (id int PRIMARY KEY, note text);
           CREATE SCHEMA "Shop";
           CREATE TABLE "Shop"."Order Lines" ("Id" int PRIMARY KEY);
           ALTER TABLE "Shop"."Order Lines" REPLICA IDENTITY FULL;
           CREATE TABLE events (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
           CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');"#,
    )
    .await;
    // Not ready before: the check names every table without FULL.
    let before = analyze(&db);
    assert_eq!(before.status.code(), Some(1));

    let dry = ferry(&db, &["prepare", "source", "--dry-run"]);
    let out = String::from_utf8_lossy(&dry.stdout).into_owned();
    assert!(
        dry.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let statements: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("ALTER"))
        .collect();
    assert_eq!(
        statements,
        vec![
            r#"  ALTER TABLE "public"."events" REPLICA IDENTITY FULL;"#,
            r#"  ALTER TABLE "public"."events_2026" REPLICA IDENTITY FULL;"#,
            r#"  ALTER TABLE "public"."plain" REPLICA IDENTITY FULL;"#,
        ],
        "{out}"
    );
    // The stop-marker table comes first when it is missing (the exporter's role may
    // not be allowed to make it).
    let first = out
        .lines()
        .find(|l| l.starts_with("  "))
        .unwrap_or_default();
    assert!(
        first.starts_with("  CREATE SCHEMA IF NOT EXISTS ferry_metadata; CREATE TABLE IF NOT EXISTS ferry_metadata.stop_markers (")
            && first.ends_with("ALTER TABLE ferry_metadata.stop_markers REPLICA IDENTITY FULL;"),
        "{out}"
    );
    assert!(out.contains("would run on the source (4 changes)"), "{out}");
    assert!(out.contains("nothing was changed"), "{out}");
    // Still not ready: --dry-run changed nothing.
    assert_eq!(analyze(&db).status.code(), Some(1));

    let run = ferry(&db, &["prepare", "source"]);
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(out.contains("done: 4 changes made"), "{out}");
    let after = analyze(&db);
    assert!(
        after.status.success(),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );
    let again = ferry(&db, &["prepare", "source"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("needs no change"));
}

// ---------------------------------------------------------------------------------
// The schema files: what YugabyteDB cannot take, each once, with its fix.

/// pg_dump's head of an entry.
fn head(name: &str, kind: &str, schema: &str) -> String {
    format!("--\n-- Name: {name}; Type: {kind}; Schema: {schema}; Owner: ferry\n--\n\n")
}

/// A schema directory in pg_dump's format seeded with one instance of each issue the
/// analysis knows for YugabyteDB, and the issues expected: (category, object, severity).
fn seeded_schema(dir: &std::path::Path) -> Vec<(&'static str, &'static str, &'static str)> {
    let schema = dir.join("schema");
    std::fs::create_dir_all(&schema).unwrap();
    let preamble = "SET statement_timeout = 0;\nSET check_function_bodies = false;\nSET default_tablespace = '';\n\n";
    let files: Vec<(&str, String)> = vec![
        (
            "types.sql",
            format!(
                "{preamble}{}CREATE TYPE public.pair AS (\n    a integer,\n    b integer\n);\n",
                head("pair", "TYPE", "public")
            ),
        ),
        (
            "functions.sql",
            format!(
                "{preamble}{}CREATE FUNCTION public.take_lock() RETURNS void\n    LANGUAGE plpgsql\n    AS $$\nBEGIN\n  PERFORM pg_advisory_lock(42);\nEND\n$$;\n\n\
                 {}CREATE FUNCTION public.announce() RETURNS trigger\n    LANGUAGE plpgsql\n    AS $$\nBEGIN\n  NOTIFY docs_changed;\n  RETURN NEW;\nEND\n$$;\n\n\
                 {}CREATE FUNCTION public.drop_blob(o oid) RETURNS integer\n    LANGUAGE sql\n    AS $$ SELECT lo_unlink(o) $$;\n\n\
                 {}CREATE FUNCTION public.row_version(d_id bigint) RETURNS text\n    LANGUAGE sql\n    AS $$ SELECT xmin::text FROM public.docs WHERE id = d_id $$;\n",
                head("take_lock()", "FUNCTION", "public"),
                head("announce()", "FUNCTION", "public"),
                head("drop_blob(oid)", "FUNCTION", "public"),
                head("row_version(bigint)", "FUNCTION", "public"),
            ),
        ),
        (
            "tables.sql",
            format!(
                "{preamble}{}CREATE TABLE public.docs (\n    id bigint NOT NULL,\n    body jsonb,\n    tags text[],\n    pos public.pair,\n    during tsrange,\n    note text,\n    gist text,\n    cm numeric,\n    inches numeric GENERATED ALWAYS AS ((cm / 2.54)) STORED\n);\n\n\
                 ALTER TABLE public.docs OWNER TO ferry;\n\n\
                 {}CREATE TABLE public.capitals (\n    state character(2) NOT NULL\n)\nINHERITS (public.docs);\n\n\
                 {}CREATE UNLOGGED TABLE public.cache (\n    k text NOT NULL,\n    v text\n);\n\n\
                 {}CREATE FOREIGN TABLE public.remote (\n    id integer\n)\nSERVER remote_srv\nOPTIONS (\n    table_name 'r'\n);\n\n\
                 {}CREATE TABLE public.events (\n    id integer NOT NULL,\n    at date NOT NULL\n)\nPARTITION BY RANGE (at);\n\n\
                 SET default_tablespace = fast;\n\n\
                 --\n-- Name: geo; Type: TABLE; Schema: public; Owner: ferry; Tablespace: fast\n--\n\n\
                 CREATE TABLE public.geo (\n    id integer NOT NULL\n);\n\n\
                 SET default_tablespace = '';\n",
                head("docs", "TABLE", "public"),
                head("capitals", "TABLE", "public"),
                head("cache", "TABLE", "public"),
                head("remote", "FOREIGN TABLE", "public"),
                head("events", "TABLE", "public"),
            ),
        ),
        (
            "constraints.sql",
            format!(
                "{preamble}{}ALTER TABLE ONLY public.docs\n    ADD CONSTRAINT docs_pkey PRIMARY KEY (id);\n\n\
                 {}ALTER TABLE ONLY public.docs\n    ADD CONSTRAINT docs_note_key UNIQUE (note) DEFERRABLE INITIALLY DEFERRED;\n\n\
                 {}ALTER TABLE ONLY public.docs\n    ADD CONSTRAINT docs_during_excl EXCLUDE USING gist (during WITH &&);\n\n\
                 {}ALTER TABLE ONLY public.docs\n    ADD CONSTRAINT docs_body_key UNIQUE (body);\n",
                head("docs docs_pkey", "CONSTRAINT", "public"),
                head("docs docs_note_key", "CONSTRAINT", "public"),
                head("docs docs_during_excl", "CONSTRAINT", "public"),
                head("docs docs_body_key", "CONSTRAINT", "public"),
            ),
        ),
        (
            "views.sql",
            format!(
                "{preamble}{}CREATE VIEW public.doc_rows AS\n SELECT d.ctid AS row_address,\n    d.id\n   FROM public.docs d;\n",
                head("doc_rows", "VIEW", "public"),
            ),
        ),
        (
            "indexes.sql",
            format!(
                "{preamble}{}CREATE INDEX docs_gist_idx ON public.docs USING gist (during);\n\n\
                 {}CREATE INDEX docs_brin_idx ON public.docs USING brin (id);\n\n\
                 {}CREATE INDEX docs_spgist_idx ON public.docs USING spgist (during);\n\n\
                 {}CREATE INDEX docs_hash_idx ON public.docs USING hash (id);\n\n\
                 {}CREATE INDEX docs_gin_multi ON public.docs USING gin (body, tags);\n\n\
                 {}CREATE INDEX docs_gin_desc ON public.docs USING gin (tags DESC);\n\n\
                 {}CREATE INDEX docs_tags_idx ON public.docs USING btree (tags);\n\n\
                 {}CREATE INDEX docs_pos_idx ON public.docs USING btree (pos);\n\n\
                 {}CREATE INDEX docs_gist_col_idx ON public.docs USING btree (gist);\n\n\
                 {}CREATE INDEX docs_note_idx ON public.docs USING btree (note);\n\nALTER TABLE public.docs CLUSTER ON docs_note_idx;\n",
                head("docs_gist_idx", "INDEX", "public"),
                head("docs_brin_idx", "INDEX", "public"),
                head("docs_spgist_idx", "INDEX", "public"),
                head("docs_hash_idx", "INDEX", "public"),
                head("docs_gin_multi", "INDEX", "public"),
                head("docs_gin_desc", "INDEX", "public"),
                head("docs_tags_idx", "INDEX", "public"),
                head("docs_pos_idx", "INDEX", "public"),
                head("docs_gist_col_idx", "INDEX", "public"),
                head("docs_note_idx", "INDEX", "public"),
            ),
        ),
        (
            "triggers.sql",
            format!(
                "{preamble}{}CREATE CONSTRAINT TRIGGER docs_check AFTER INSERT ON public.docs DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.announce();\n\n\
                 {}CREATE TRIGGER docs_audit AFTER DELETE ON public.docs REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION public.announce();\n\n\
                 {}CREATE TRIGGER events_before BEFORE INSERT ON public.events FOR EACH ROW EXECUTE FUNCTION public.announce();\n",
                head("docs docs_check", "TRIGGER", "public"),
                head("docs docs_audit", "TRIGGER", "public"),
                head("events events_before", "TRIGGER", "public"),
            ),
        ),
    ];
    for (name, text) in files {
        std::fs::write(schema.join(name), text).unwrap();
    }
    vec![
        (
            "advisory lock",
            "function public.take_lock()",
            "unsupported",
        ),
        ("listen/notify", "function public.announce()", "unsupported"),
        (
            "large object",
            "function public.drop_blob(oid)",
            "unsupported",
        ),
        (
            "system column",
            "function public.row_version(bigint)",
            "unsupported",
        ),
        ("generated column", "table public.docs", "degraded"),
        ("table inheritance", "table public.capitals", "unsupported"),
        ("unlogged table", "table public.cache", "note"),
        ("foreign table", "foreign table public.remote", "degraded"),
        ("tablespace", "table public.geo", "unsupported"),
        ("primary key", "constraint public.docs docs_pkey", "note"),
        (
            "deferrable constraint",
            "constraint public.docs docs_note_key",
            "unsupported",
        ),
        (
            "exclusion constraint",
            "constraint public.docs docs_during_excl",
            "unsupported",
        ),
        (
            "index key type",
            "constraint public.docs docs_body_key",
            "unsupported",
        ),
        ("system column", "view public.doc_rows", "unsupported"),
        (
            "index access method",
            "index public.docs_gist_idx",
            "unsupported",
        ),
        (
            "index access method",
            "index public.docs_brin_idx",
            "unsupported",
        ),
        (
            "index access method",
            "index public.docs_spgist_idx",
            "unsupported",
        ),
        ("index access method", "index public.docs_hash_idx", "note"),
        ("gin index", "index public.docs_gin_multi", "unsupported"),
        ("gin index", "index public.docs_gin_desc", "unsupported"),
        (
            "index key type",
            "index public.docs_tags_idx",
            "unsupported",
        ),
        ("index key type", "index public.docs_pos_idx", "unsupported"),
        ("alter table", "table public.docs", "unsupported"),
        ("trigger", "trigger public.docs docs_check", "unsupported"),
        ("trigger", "trigger public.docs docs_audit", "unsupported"),
        ("trigger", "trigger public.events events_before", "degraded"),
    ]
}

/// A source that passes the readiness check.
async fn ready_source() -> String {
    source_with(
        "CREATE TABLE ok (id int PRIMARY KEY, note text);
         ALTER TABLE ok REPLICA IDENTITY FULL;",
    )
    .await
}

/// `ferry analyze-schema --output-format json` on `dir` for a YugabyteDB target: the
/// process's output and the report.
fn analyze_json(db: &str, dir: &std::path::Path) -> (Output, serde_json::Value) {
    let output = ferry(
        db,
        &[
            "--set",
            "target.engine=yugabytedb",
            "analyze-schema",
            "--export-dir",
            dir.to_str().unwrap(),
            "--output-format",
            "json",
        ],
    );
    let json = serde_json::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, json)
}

/// The report's structure and counts agree; returns its issues as
/// (category, object, severity).
fn validate(json: &serde_json::Value) -> Vec<(String, String, String)> {
    for key in [
        "target_engine",
        "export_dir",
        "schema_files",
        "source",
        "summary",
        "issues",
        "objects",
    ] {
        assert!(json.get(key).is_some(), "no {key}: {json}");
    }
    let issues = json["issues"].as_array().unwrap();
    let summary = &json["summary"];
    assert_eq!(summary["issues"].as_u64().unwrap() as usize, issues.len());
    let mut by_severity = std::collections::BTreeMap::new();
    let mut by_category = std::collections::BTreeMap::new();
    let mut out = Vec::new();
    for issue in issues {
        for key in ["category", "severity", "object", "reason", "fix"] {
            assert!(
                issue[key].as_str().is_some_and(|s| !s.is_empty()),
                "issue without {key}: {issue}"
            );
        }
        if issue["category"] != "source readiness" {
            assert!(issue["file"].as_str().unwrap().ends_with(".sql"), "{issue}");
            assert!(issue["line"].as_u64().unwrap() > 0, "{issue}");
        }
        if let Some(url) = issue["docs_url"].as_str() {
            assert!(url.starts_with("https://docs.yugabyte.com/"), "{issue}");
        }
        let severity = issue["severity"].as_str().unwrap().to_owned();
        *by_severity.entry(severity.clone()).or_insert(0u64) += 1;
        *by_category
            .entry(issue["category"].as_str().unwrap().to_owned())
            .or_insert(0u64) += 1;
        out.push((
            issue["category"].as_str().unwrap().to_owned(),
            issue["object"].as_str().unwrap().to_owned(),
            severity,
        ));
    }
    for severity in ["unsupported", "degraded", "note"] {
        assert_eq!(
            summary["by_severity"][severity].as_u64().unwrap(),
            by_severity.get(severity).copied().unwrap_or(0),
            "{severity}: {summary}"
        );
    }
    let categories: std::collections::BTreeMap<String, u64> =
        serde_json::from_value(summary["by_category"].clone()).unwrap();
    assert_eq!(categories, by_category);
    assert_eq!(
        summary["passed"].as_bool().unwrap(),
        !by_severity.contains_key("unsupported")
            && json["source"]["ready"].as_bool().unwrap_or(true)
    );
    out
}

fn sorted(mut v: Vec<(String, String, String)>) -> Vec<(String, String, String)> {
    v.sort();
    v
}

#[tokio::test]
async fn each_yugabytedb_issue_in_the_schema_files_is_reported_once_with_its_fix() {
    let db = ready_source().await;
    let dir = tempfile::tempdir().unwrap();
    let expected = seeded_schema(dir.path());

    let (output, json) = analyze_json(&db, dir.path());
    assert_eq!(
        output.status.code(),
        Some(1),
        "unsupported issues fail: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(json["target_engine"], "yugabytedb");
    assert_eq!(json["source"]["ready"], true);
    let found = validate(&json);
    let want: Vec<(String, String, String)> = expected
        .iter()
        .map(|(c, o, s)| (c.to_string(), o.to_string(), s.to_string()))
        .collect();
    assert_eq!(sorted(found.clone()), sorted(want.clone()), "{json:#}");
    // The objects by pg_dump's type.
    assert_eq!(json["objects"]["INDEX"], 10);
    assert_eq!(json["objects"]["TABLE"], 5);
    assert_eq!(json["objects"]["FOREIGN TABLE"], 1);
    assert_eq!(json["objects"]["CONSTRAINT"], 4);
    assert_eq!(json["objects"]["TRIGGER"], 3);
    assert_eq!(json["objects"]["FUNCTION"], 4);

    // HTML: one page naming every object, written to a file.
    let page = dir.path().join("report.html");
    let html_run = ferry(
        &db,
        &[
            "--set",
            "target.engine=yugabytedb",
            "analyze-schema",
            "--export-dir",
            dir.path().to_str().unwrap(),
            "--output-format",
            "html",
            "--output-file",
            page.to_str().unwrap(),
        ],
    );
    assert_eq!(html_run.status.code(), Some(1));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    for (_, object, _) in &want {
        assert!(
            html.contains(&format!("<code>{object}</code>")),
            "{object} not in the page"
        );
    }
    assert!(!html.contains("<script") && !html.contains("<link") && !html.contains(" src="));

    // Editing a file: the GiST index removed, one issue fewer.
    let indexes = dir.path().join("schema/indexes.sql");
    let text = std::fs::read_to_string(&indexes).unwrap();
    let edited = text.replace(
        "CREATE INDEX docs_gist_idx ON public.docs USING gist (during);",
        "CREATE INDEX docs_gist_idx ON public.docs USING btree (id);",
    );
    assert_ne!(text, edited);
    std::fs::write(&indexes, edited).unwrap();
    let (_, again) = analyze_json(&db, dir.path());
    let after = validate(&again);
    assert_eq!(after.len(), found.len() - 1, "{again:#}");
    assert!(!after
        .iter()
        .any(|(_, o, _)| o == "index public.docs_gist_idx"));
}

#[tokio::test]
async fn a_schema_with_only_notes_and_a_ready_source_passes() {
    let db = ready_source().await;
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("schema");
    std::fs::create_dir_all(&schema).unwrap();
    std::fs::write(
        schema.join("tables.sql"),
        format!(
            "{}CREATE TABLE public.t (\n    id integer NOT NULL,\n    gist text\n);\n",
            head("t", "TABLE", "public")
        ),
    )
    .unwrap();
    std::fs::write(
        schema.join("indexes.sql"),
        format!(
            "{}CREATE INDEX t_gist ON public.t USING btree (gist);\n\n{}CREATE INDEX t_hash ON public.t USING hash (id);\n",
            head("t_gist", "INDEX", "public"),
            head("t_hash", "INDEX", "public")
        ),
    )
    .unwrap();
    let (output, json) = analyze_json(&db, dir.path());
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let found = validate(&json);
    assert_eq!(
        found,
        [(
            "index access method".to_owned(),
            "index public.t_hash".to_owned(),
            "note".to_owned()
        )]
    );
    assert_eq!(json["summary"]["passed"], true);

    // The same files for a PostgreSQL target: nothing to say.
    let pg = ferry(
        &db,
        &[
            "analyze-schema",
            "--export-dir",
            dir.path().to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&pg.stdout);
    assert_eq!(pg.status.code(), Some(0), "{text}");
    assert!(text.contains("target engine postgresql"), "{text}");
    assert!(text.contains("summary: 0 issue(s)"), "{text}");
    assert!(
        text.contains("the source is ready: 1 table(s) selected"),
        "{text}"
    );
}

#[tokio::test]
async fn an_export_dir_without_a_schema_is_a_usage_error() {
    let db = ready_source().await;
    let dir = tempfile::tempdir().unwrap();
    let output = ferry(
        &db,
        &[
            "analyze-schema",
            "--export-dir",
            dir.path().to_str().unwrap(),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("run `ferry export schema --export-dir"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_schema_exported_from_a_real_source_is_analyzed() {
    let db = source_with(
        "CREATE TABLE docs (
             id bigint PRIMARY KEY, body jsonb, during tsrange, note text, cm numeric,
             inches numeric GENERATED ALWAYS AS (cm / 2.54) STORED,
             CONSTRAINT docs_note_key UNIQUE (note) DEFERRABLE,
             CONSTRAINT docs_during_excl EXCLUDE USING gist (during WITH &&));
         ALTER TABLE docs REPLICA IDENTITY FULL;
         CREATE INDEX docs_brin_idx ON docs USING brin (id);
         CREATE INDEX docs_body_idx ON docs (body);
         CREATE INDEX docs_note_idx ON docs (note);
         CREATE TABLE events (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
         ALTER TABLE events REPLICA IDENTITY FULL;
         ALTER TABLE events_2026 REPLICA IDENTITY FULL;
         CREATE FUNCTION take_lock() RETURNS void LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_advisory_lock(1); END $$;
         CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
         CREATE TRIGGER events_before BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION touch();
         CREATE VIEW doc_rows AS SELECT d.ctid AS addr, d.id FROM docs d;",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let export = ferry(
        &db,
        &[
            "export",
            "schema",
            "--export-dir",
            dir.path().to_str().unwrap(),
        ],
    );
    assert!(
        export.status.success(),
        "{}{}",
        String::from_utf8_lossy(&export.stdout),
        String::from_utf8_lossy(&export.stderr)
    );
    let (output, json) = analyze_json(&db, dir.path());
    assert_eq!(output.status.code(), Some(1));
    let found: Vec<(String, String, String)> = validate(&json)
        .into_iter()
        .filter(|(c, _, _)| c != "source readiness")
        .collect();
    let want = [
        ("generated column", "table public.docs", "degraded"),
        (
            "deferrable constraint",
            "constraint public.docs docs_note_key",
            "unsupported",
        ),
        (
            "exclusion constraint",
            "constraint public.docs docs_during_excl",
            "unsupported",
        ),
        ("primary key", "constraint public.docs docs_pkey", "note"),
        (
            "primary key",
            "constraint public.events events_pkey",
            "note",
        ),
        (
            "primary key",
            "constraint public.events_2026 events_2026_pkey",
            "note",
        ),
        (
            "index access method",
            "index public.docs_brin_idx",
            "unsupported",
        ),
        (
            "index key type",
            "index public.docs_body_idx",
            "unsupported",
        ),
        ("trigger", "trigger public.events events_before", "degraded"),
        (
            "advisory lock",
            "function public.take_lock()",
            "unsupported",
        ),
        ("system column", "view public.doc_rows", "unsupported"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(c, o, s)| (c.to_string(), o.to_string(), s.to_string()))
        .collect();
    assert_eq!(sorted(found), sorted(want), "{json:#}");
    assert!(json["objects"]["TABLE"].as_u64().unwrap() >= 3, "{json:#}");
    assert_eq!(json["objects"]["INDEX"].as_u64(), Some(3), "{json:#}");
}

#[test]
fn without_a_source_only_the_files_are_analyzed() {
    let stack = Stack::get();
    let text = stack.config_toml(
        &unique_name("analyze"),
        "unused",
        "unused",
        "unused",
        &format!("127.0.0.1:{}", free_port()),
    );
    // The same configuration without its [source] section.
    let start = text.find("[source]").unwrap();
    let end = start + text[start..].find("\n[target]").unwrap();
    let text = format!("{}{}", &text[..start], &text[end..]);
    assert!(!text.contains("[source]"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, text).unwrap();
    let schema = dir.path().join("exp/schema");
    std::fs::create_dir_all(&schema).unwrap();
    std::fs::write(
        schema.join("indexes.sql"),
        format!(
            "{}CREATE INDEX t_hash ON public.t USING hash (id);\n",
            head("t_hash", "INDEX", "public")
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("--config")
            .arg(&config)
            .args(["--set", "target.engine=yugabytedb", "analyze-schema"])
            .args(args)
            .output()
            .unwrap()
    };
    let output = run(&[
        "--export-dir",
        dir.path().join("exp").to_str().unwrap(),
        "--output-format",
        "json",
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["source"], serde_json::Value::Null);
    assert_eq!(validate(&json).len(), 1);
    // No source and no schema: nothing to analyze, a usage error.
    let nothing = run(&["--export-dir", dir.path().join("none").to_str().unwrap()]);
    assert_eq!(nothing.status.code(), Some(2));
}
