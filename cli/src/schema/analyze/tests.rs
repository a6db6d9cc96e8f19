//! The rules, one test each (with what must not be found), and the report's formats.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::rules::*;
use super::*;

/// The issues of `sql` as one file (`file`) for YugabyteDB.
fn yb_in(file: &str, sql: &str) -> Vec<Issue> {
    analyze_texts(&[(file, sql)], Engine::Yugabytedb).issues
}

/// Tables and types first, then `sql` in `file`.
fn yb_with(tables: &str, file: &str, sql: &str) -> Vec<Issue> {
    analyze_texts(&[("tables.sql", tables), (file, sql)], Engine::Yugabytedb).issues
}

fn categories(issues: &[Issue]) -> Vec<(&str, Severity)> {
    issues
        .iter()
        .map(|i| (i.category.as_str(), i.severity))
        .collect()
}

const ORDERS: &str = "CREATE TABLE public.orders (\n    id bigint NOT NULL,\n    gist text,\n    doc jsonb,\n    tags text[],\n    ip inet,\n    search tsvector,\n    nick public.citext,\n    at timestamp with time zone,\n    total numeric(12,2)\n);\n";

#[test]
fn ordinary_ddl_has_no_finding() {
    let sql = "SET default_tablespace = '';\nSET default_table_access_method = heap;\n\
        CREATE TABLE public.customers (id integer NOT NULL, name text, gist text, \"xmin_note\" text);\n\
        CREATE INDEX customers_name_idx ON public.customers USING btree (name);\n\
        CREATE INDEX customers_gist_idx ON public.customers USING btree (gist);\n\
        CREATE INDEX customers_lower_idx ON public.customers USING btree (lower(name) DESC);\n\
        CREATE TABLE public.orders (id integer NOT NULL, customer integer, doc jsonb,\n\
          CONSTRAINT orders_customer_fk FOREIGN KEY (customer) REFERENCES public.customers(id) DEFERRABLE INITIALLY DEFERRED);\n\
        ALTER TABLE ONLY public.orders ADD CONSTRAINT orders_c_fk FOREIGN KEY (customer) REFERENCES public.customers(id) DEFERRABLE;\n\
        ALTER TABLE ONLY public.customers ADD CONSTRAINT customers_name_key UNIQUE (name) NOT DEFERRABLE;\n\
        CREATE INDEX orders_doc_gin ON public.orders USING gin (doc);\n\
        CREATE INDEX orders_doc_asc ON public.orders USING gin (doc ASC);\n\
        CREATE INDEX orders_doc_key ON public.orders USING btree (((doc ->> 'k'::text)));\n\
        CREATE TABLE public.ids (id bigint GENERATED ALWAYS AS IDENTITY, note text DEFAULT 'USING gist INHERITS (x) ctid');\n\
        CREATE VIEW public.v AS SELECT c.id, c.name AS xmin_name FROM public.customers c;\n\
        CREATE FUNCTION public.f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN RAISE NOTICE 'notify pg_advisory_lock( ctid'; END $$;\n\
        CREATE TRIGGER t AFTER INSERT ON public.orders FOR EACH ROW EXECUTE FUNCTION public.f();\n\
        -- a comment: CREATE INDEX x ON t USING gist (y); INHERITS (z)\n";
    let found = yb_in("tables.sql", sql);
    assert!(found.is_empty(), "{found:#?}");
    assert!(analyze_texts(&[("tables.sql", sql)], Engine::Postgresql)
        .issues
        .is_empty());
}

#[test]
fn gist_brin_spgist_are_unsupported_hash_is_a_note() {
    let sql = "CREATE INDEX a ON public.orders USING gist (gist);\n\
               CREATE INDEX b ON public.orders USING brin (at);\n\
               CREATE INDEX c ON public.orders USING spgist (ip);\n\
               CREATE INDEX d ON public.orders USING hash (id);\n";
    let found = yb_with(ORDERS, "indexes.sql", sql);
    assert_eq!(
        categories(&found),
        [
            (INDEX_METHOD, Severity::Unsupported),
            (INDEX_METHOD, Severity::Unsupported),
            (INDEX_METHOD, Severity::Unsupported),
            (INDEX_METHOD, Severity::Note),
        ],
        "{found:#?}"
    );
    assert_eq!(found[0].object, "index public.a");
    assert_eq!(found[0].file.as_deref(), Some("indexes.sql"));
    assert_eq!(found[1].line, Some(2));
    assert!(found[1].reason.contains("brin"));
    assert!(found[0]
        .docs_url
        .as_deref()
        .unwrap()
        .starts_with("https://docs.yugabyte.com/"));
}

#[test]
fn gin_on_several_columns_or_with_desc_is_unsupported() {
    let sql = "CREATE INDEX g1 ON public.orders USING gin (doc, search);\n\
               CREATE INDEX g2 ON public.orders USING gin (search DESC);\n\
               CREATE INDEX g3 ON public.orders USING gin (doc);\n";
    let found = yb_with(ORDERS, "indexes.sql", sql);
    assert_eq!(
        categories(&found),
        [(GIN, Severity::Unsupported), (GIN, Severity::Unsupported)],
        "{found:#?}"
    );
    assert!(found[0].reason.contains("2 columns"));
    assert!(found[1].reason.contains("DESC"));
}

#[test]
fn exclusion_constraints_are_unsupported_once() {
    let sql = "ALTER TABLE ONLY public.rooms ADD CONSTRAINT no_overlap EXCLUDE USING gist (room WITH =, during WITH &&) DEFERRABLE;\n\
               CREATE TABLE public.b (r int, during tsrange, EXCLUDE USING gist (during WITH &&));\n";
    let found = yb_in("constraints.sql", sql);
    assert_eq!(
        categories(&found),
        [
            (EXCLUSION, Severity::Unsupported),
            (EXCLUSION, Severity::Unsupported)
        ],
        "{found:#?}"
    );
    assert_eq!(found[0].object, "constraint public.rooms no_overlap");
    assert_eq!(found[1].object, "table public.b");
}

#[test]
fn deferrable_constraints_other_than_foreign_keys_are_unsupported() {
    let sql = "ALTER TABLE ONLY public.users ADD CONSTRAINT users_email_key UNIQUE (email) DEFERRABLE INITIALLY DEFERRED;\n\
               CREATE TABLE public.t (id int PRIMARY KEY DEFERRABLE, code text, CONSTRAINT t_code UNIQUE (code) DEFERRABLE, r int REFERENCES public.users(id) DEFERRABLE);\n\
               ALTER TABLE ONLY public.t ADD CONSTRAINT t_r_fk FOREIGN KEY (r) REFERENCES public.users(id) DEFERRABLE INITIALLY DEFERRED;\n";
    let found = yb_in("constraints.sql", sql);
    assert_eq!(
        categories(&found),
        [
            (DEFERRABLE, Severity::Unsupported),
            (DEFERRABLE, Severity::Unsupported)
        ],
        "{found:#?}"
    );
    assert!(found[0].reason.starts_with("unique constraint"));
    assert!(found[1].reason.contains("constraint t_code"));
    assert!(found[1].reason.contains("primary key on id"));
}

#[test]
fn tablespaces_are_reported_once_per_object() {
    let sql = "CREATE TABLESPACE fast LOCATION '/ssd';\n\
               CREATE INDEX i ON public.orders USING btree (id) TABLESPACE fast;\n\
               ALTER TABLE public.orders SET TABLESPACE fast;\n";
    let found = yb_with(ORDERS, "other.sql", sql);
    assert_eq!(
        categories(&found),
        [(TABLESPACE, Severity::Unsupported); 3],
        "{found:#?}"
    );
    assert_eq!(found[0].object, "tablespace fast");

    // pg_dump's way: the SET (which the export may put in another file) and the
    // head's `Tablespace:`; one issue, on the object.
    let dumped = "SET default_tablespace = fast;\n\n--\n-- Name: t; Type: TABLE; Schema: public; Owner: o; Tablespace: fast\n--\n\n\
                  CREATE TABLE public.t (id integer);\n\n\
                  SET default_tablespace = '';\n\n--\n-- Name: u; Type: TABLE; Schema: public; Owner: o\n--\n\n\
                  CREATE TABLE public.u (id integer);\n";
    let found = yb_in("tables.sql", dumped);
    assert_eq!(
        categories(&found),
        [(TABLESPACE, Severity::Unsupported)],
        "{found:#?}"
    );
    assert_eq!(found[0].object, "table public.t");
    assert_eq!(found[0].line, Some(7));

    // A SET alone (hand-written file): reported on the SET.
    let found = yb_in(
        "tables.sql",
        "SET default_tablespace = slow;\nCREATE TABLE public.v (id int);\n",
    );
    assert_eq!(
        categories(&found),
        [(TABLESPACE, Severity::Unsupported)],
        "{found:#?}"
    );
    assert_eq!(found[0].object, "setting default_tablespace = slow");

    // On PostgreSQL: a note.
    let pg = analyze_texts(&[("tables.sql", dumped)], Engine::Postgresql).issues;
    assert_eq!(categories(&pg), [(TABLESPACE, Severity::Note)]);
}

#[test]
fn inheritance_is_unsupported() {
    let sql =
        "CREATE TABLE public.capitals (state character(2) NOT NULL) INHERITS (public.cities);\n\
               ALTER TABLE public.towns INHERIT public.cities;\n";
    let found = yb_in("tables.sql", sql);
    assert_eq!(
        categories(&found),
        [(INHERITANCE, Severity::Unsupported); 2],
        "{found:#?}"
    );
    assert!(found[0].reason.contains("public.cities"));
}

#[test]
fn trigger_rules() {
    let tables = "CREATE TABLE public.events (id int, at date) PARTITION BY RANGE (at);\n\
                  CREATE TABLE public.plain (id int);\n";
    let sql = "CREATE CONSTRAINT TRIGGER c AFTER INSERT ON public.plain DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.f();\n\
               CREATE TRIGGER r AFTER DELETE ON public.plain REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION public.f();\n\
               CREATE TRIGGER b BEFORE INSERT ON public.events FOR EACH ROW EXECUTE FUNCTION public.f();\n\
               CREATE TRIGGER ok1 BEFORE INSERT ON public.plain FOR EACH ROW EXECUTE FUNCTION public.f();\n\
               CREATE TRIGGER ok2 AFTER INSERT ON public.events FOR EACH ROW EXECUTE FUNCTION public.f();\n";
    let found = yb_with(tables, "triggers.sql", sql);
    assert_eq!(
        categories(&found),
        [
            (TRIGGER, Severity::Unsupported),
            (TRIGGER, Severity::Unsupported),
            (TRIGGER, Severity::Degraded)
        ],
        "{found:#?}"
    );
    assert_eq!(found[0].object, "trigger public.plain c");
    assert!(found[0].reason.contains("constraint trigger"));
    assert!(found[1].reason.contains("REFERENCING"));
    assert!(found[2].reason.contains("public.events"));
}

#[test]
fn stored_generated_columns_are_degraded_identity_is_not() {
    let sql = "CREATE TABLE public.people (name text, cm numeric, inches numeric GENERATED ALWAYS AS ((cm / 2.54)) STORED, id int GENERATED ALWAYS AS IDENTITY);\n\
               ALTER TABLE public.people ADD COLUMN feet numeric GENERATED ALWAYS AS (cm / 30.48) STORED;\n";
    let found = yb_in("tables.sql", sql);
    assert_eq!(
        categories(&found),
        [(GENERATED, Severity::Degraded); 2],
        "{found:#?}"
    );
    assert!(found[0].reason.contains("inches"));
    assert!(found[1].reason.contains("feet"));
}

#[test]
fn unlogged_foreign_and_alter_table_variants() {
    let sql = "CREATE UNLOGGED TABLE public.cache (k text, v text);\n\
               CREATE FOREIGN TABLE public.remote (id int) SERVER srv OPTIONS (table_name 'r');\n\
               ALTER TABLE public.cache CLUSTER ON cache_k_idx;\n\
               ALTER TABLE ONLY public.cache ALTER COLUMN k SET (n_distinct=0.1);\n\
               ALTER TABLE ONLY public.cache ALTER COLUMN k SET DEFAULT 'x';\n\
               ALTER TABLE public.cache DISABLE RULE r;\n";
    let found = yb_in("tables.sql", sql);
    assert_eq!(
        categories(&found),
        [
            (UNLOGGED, Severity::Note),
            (FOREIGN_TABLE, Severity::Degraded),
            (ALTER_TABLE, Severity::Unsupported),
            (ALTER_TABLE, Severity::Unsupported),
            (ALTER_TABLE, Severity::Unsupported),
        ],
        "{found:#?}"
    );
    assert_eq!(found[1].object, "foreign table public.remote");
    assert!(found[2].reason.contains("CLUSTER ON"));
}

#[test]
fn system_columns_in_views_and_functions() {
    let sql = "CREATE VIEW public.v AS SELECT t.ctid, t.xmin FROM public.t;\n\
               CREATE FUNCTION public.f() RETURNS bigint LANGUAGE sql AS 'SELECT count(xmax) FROM public.t';\n\
               CREATE FUNCTION public.g() RETURNS text LANGUAGE sql AS $$ SELECT 'ctid' $$;\n";
    let found = yb_in("views.sql", sql);
    assert_eq!(
        categories(&found),
        [(SYSTEM_COLUMN, Severity::Unsupported); 2],
        "{found:#?}"
    );
    assert!(found[0].reason.contains("ctid, xmin"));
    assert!(found[1].reason.contains("xmax"));
    assert_eq!(found[1].object, "function public.f");
}

#[test]
fn keys_on_types_the_lsm_index_cannot_key() {
    let types = "CREATE TYPE public.pair AS (a integer, b integer);\n\
                 CREATE DOMAIN public.doc AS jsonb;\n\
                 CREATE TYPE public.mood AS ENUM ('a', 'b');\n";
    let tables = format!(
        "{ORDERS}CREATE TABLE public.t (id int, p public.pair, d public.doc, m public.mood, r int4range, CONSTRAINT t_d_key UNIQUE (d));\n\
         CREATE TABLE public.t_2026 PARTITION OF public.t FOR VALUES FROM (1) TO (2);\n"
    );
    let sql = "CREATE INDEX k1 ON public.orders USING btree (doc);\n\
               CREATE INDEX k2 ON public.orders (tags, id);\n\
               CREATE UNIQUE INDEX k3 ON public.orders USING btree (nick);\n\
               CREATE INDEX k4 ON public.orders USING hash (search);\n\
               CREATE INDEX k5 ON public.t (p);\n\
               CREATE INDEX k6 ON public.t_2026 (r);\n\
               CREATE INDEX ok1 ON public.orders (id, gist, at, total);\n\
               CREATE INDEX ok2 ON public.t (m);\n\
               CREATE INDEX ok3 ON public.orders ((doc ->> 'a'));\n\
               ALTER TABLE ONLY public.orders ADD CONSTRAINT orders_ip_key UNIQUE (ip);\n";
    let found = analyze_texts(
        &[
            ("types.sql", types),
            ("tables.sql", &tables),
            ("indexes.sql", sql),
        ],
        Engine::Yugabytedb,
    )
    .issues;
    let keys: Vec<(&str, &str)> = found
        .iter()
        .filter(|i| i.category == KEY_TYPE)
        .map(|i| (i.object.as_str(), i.reason.as_str()))
        .collect();
    assert_eq!(keys.len(), 8, "{found:#?}");
    assert!(
        keys[0].0 == "table public.t" && keys[0].1.contains("d public.doc (a domain over jsonb)"),
        "{keys:?}"
    );
    assert!(keys[1].1.contains("doc jsonb"), "{keys:?}");
    assert!(keys[2].1.contains("tags text[] (an array)"), "{keys:?}");
    assert!(
        keys[3].1.starts_with("unique index on nick public.citext"),
        "{keys:?}"
    );
    assert!(keys[4].1.contains("search tsvector"), "{keys:?}");
    assert!(
        keys[5].1.contains("p public.pair (a composite type)"),
        "{keys:?}"
    );
    assert!(keys[6].1.contains("r int4range"), "{keys:?}");
    assert!(
        keys[7].0 == "constraint public.orders orders_ip_key" && keys[7].1.contains("ip inet"),
        "{keys:?}"
    );
    assert!(found.iter().all(|i| !i.object.contains("ok")), "{found:#?}");
}

#[test]
fn advisory_locks_listen_notify_and_large_objects_in_code() {
    let sql = "CREATE FUNCTION public.a() RETURNS void LANGUAGE plpgsql AS $_$\nBEGIN\n  PERFORM pg_advisory_lock(1);\n  PERFORM pg_try_advisory_xact_lock(2);\nEND\n$_$;\n\
               CREATE FUNCTION public.n() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NOTIFY changes; PERFORM pg_notify('c', 'x'); RETURN NEW; END $$;\n\
               CREATE PROCEDURE public.l(o oid) LANGUAGE sql AS 'SELECT lo_unlink(o)';\n\
               CREATE RULE r AS ON INSERT TO public.t DO ALSO NOTIFY t_changes;\n\
               CREATE TRIGGER lo BEFORE UPDATE ON public.image FOR EACH ROW EXECUTE FUNCTION public.lo_manage(raster);\n";
    let found = yb_in("functions.sql", sql);
    assert_eq!(
        categories(&found),
        [
            (ADVISORY_LOCK, Severity::Unsupported),
            (LISTEN_NOTIFY, Severity::Unsupported),
            (LARGE_OBJECT, Severity::Unsupported),
            (LISTEN_NOTIFY, Severity::Unsupported),
            (LARGE_OBJECT, Severity::Unsupported),
        ],
        "{found:#?}"
    );
    assert!(found[0]
        .reason
        .contains("pg_advisory_lock, pg_try_advisory_xact_lock"));
    assert!(found[1].reason.contains("NOTIFY, pg_notify"));
    assert_eq!(found[3].object, "rule public.t r");
    assert_eq!(found[4].object, "trigger public.image lo");
}

#[test]
fn primary_key_added_after_create_table_is_a_note() {
    let sql = "ALTER TABLE ONLY public.orders ADD CONSTRAINT orders_pkey PRIMARY KEY (id);\n";
    let found = yb_with(ORDERS, "constraints.sql", sql);
    assert_eq!(
        categories(&found),
        [(PRIMARY_KEY, Severity::Note)],
        "{found:#?}"
    );
    assert!(found[0].reason.contains("public.orders"));
    // Inside the CREATE TABLE: nothing to say.
    assert!(yb_in(
        "tables.sql",
        "CREATE TABLE public.k (id int PRIMARY KEY, b int, PRIMARY KEY (b));"
    )
    .is_empty());
}

#[test]
fn storage_parameters_nulls_not_distinct_check_option_and_conversions() {
    let sql = "CREATE INDEX i ON public.orders USING btree (id) WITH (fillfactor='70');\n\
               ALTER TABLE ONLY public.orders ADD CONSTRAINT o_key UNIQUE NULLS NOT DISTINCT (total);\n\
               CREATE VIEW public.cheap AS SELECT id FROM public.orders WHERE total < 10 WITH CASCADED CHECK OPTION;\n\
               CREATE CONVERSION public.c FOR 'LATIN1' TO 'UTF8' FROM iso8859_1_to_utf8;\n";
    let found = yb_with(ORDERS, "other.sql", sql);
    assert_eq!(
        categories(&found),
        [
            (STORAGE_PARAMETER, Severity::Unsupported),
            (NULLS_NOT_DISTINCT, Severity::Degraded),
            (VIEW, Severity::Unsupported),
            (CONVERSION, Severity::Unsupported),
        ],
        "{found:#?}"
    );
}

#[test]
fn objects_come_from_heads_and_each_problem_is_reported_once() {
    let sql = "--\n-- Name: orders_geo; Type: INDEX; Schema: public; Owner: o\n--\n\n\
               CREATE INDEX orders_geo ON public.orders USING gist (gist);\n\n\
               CREATE INDEX orders_geo ON public.orders USING gist (gist);\n\n\
               --\n-- Name: orders orders_x; Type: CONSTRAINT; Schema: public; Owner: o\n--\n\n\
               ALTER TABLE ONLY public.orders ADD CONSTRAINT orders_x EXCLUDE USING gist (gist WITH =);\n";
    let found = yb_with(ORDERS, "indexes.sql", sql);
    // The same statement twice at different lines is two problems; the head names
    // the first only.
    assert_eq!(found.len(), 3, "{found:#?}");
    assert_eq!(found[0].object, "index public.orders_geo");
    assert_eq!(found[0].line, Some(5));
    assert_eq!(found[1].line, Some(7));
    assert_eq!(found[2].object, "constraint public.orders orders_x");
    assert_eq!(found[2].category, EXCLUSION);
    let analysis = analyze_texts(
        &[("tables.sql", ORDERS), ("indexes.sql", sql)],
        Engine::Yugabytedb,
    );
    // The head names the first; the copy added by hand counts too.
    assert_eq!(analysis.objects.get("INDEX"), Some(&2));
    assert_eq!(analysis.objects.get("CONSTRAINT"), Some(&1));
    assert_eq!(analysis.objects.get("TABLE"), Some(&1));
}

#[test]
fn a_postgresql_target_gets_only_version_independent_notes() {
    let sql = "CREATE INDEX a ON public.orders USING gist (gist);\n\
               CREATE UNLOGGED TABLE public.c (k text) INHERITS (public.orders);\n\
               CREATE FOREIGN TABLE public.remote (id int) SERVER srv;\n\
               ALTER TABLE ONLY public.orders ADD CONSTRAINT orders_pkey PRIMARY KEY (id);\n";
    let found = analyze_texts(
        &[("tables.sql", ORDERS), ("other.sql", sql)],
        Engine::Postgresql,
    )
    .issues;
    assert_eq!(
        categories(&found),
        [(FOREIGN_TABLE, Severity::Note)],
        "{found:#?}"
    );
}

#[test]
fn reports_render_as_text_json_and_escaped_html() {
    let found = yb_with(ORDERS, "indexes.sql", "CREATE INDEX \"<b>&x\" ON public.orders USING gist (gist);\nCREATE INDEX h ON public.orders USING hash (id);\n");
    let mut objects = BTreeMap::new();
    objects.insert("INDEX".to_owned(), 2);
    let report = Report::new(
        Engine::Yugabytedb,
        "dir".into(),
        vec!["indexes.sql".into()],
        Some(SourceStatus {
            ready: false,
            tables: vec![],
        }),
        [
            source_issues(&[ferry_exporter::check::Problem {
                message: "table public.t has no primary key".into(),
                fix: "add one".into(),
            }]),
            found,
        ]
        .concat(),
        objects,
        String::new(),
    );
    assert!(!report.passed());
    let json: serde_json::Value = serde_json::from_str(&report.render(Format::Json)).unwrap();
    assert_eq!(json["target_engine"], "yugabytedb");
    assert_eq!(json["summary"]["issues"], 3);
    assert_eq!(json["summary"]["by_severity"]["unsupported"], 2);
    assert_eq!(json["summary"]["by_severity"]["note"], 1);
    assert_eq!(json["summary"]["by_severity"]["degraded"], 0);
    assert_eq!(json["summary"]["by_category"][SOURCE_READINESS], 1);
    assert_eq!(json["summary"]["passed"], false);
    assert_eq!(json["issues"][0]["file"], serde_json::Value::Null);
    assert_eq!(json["issues"][1]["object"], "index public.<b>&x");
    assert_eq!(json["objects"]["INDEX"], 2);
    let text = report.render(Format::Text);
    assert!(text.contains("source readiness (1 issue)"), "{text}");
    assert!(text.contains("index access method (2 issues)"), "{text}");
    assert!(text.contains("    fix: add one"), "{text}");
    assert!(
        text.contains("summary: 3 issue(s): 2 unsupported, 0 degraded, 1 note"),
        "{text}"
    );
    let html = report.render(Format::Html);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("index public.&lt;b&gt;&amp;x"), "{html}");
    assert!(!html.contains("<b>&x"));
    assert!(!html.contains("<script") && !html.contains("<link") && !html.contains("src="));
}
