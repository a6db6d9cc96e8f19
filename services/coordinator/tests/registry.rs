//! The built-in schema registry against the local broker, through a real Confluent client
//! (`schema_registry_converter`) and raw HTTP.

use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use apache_avro::types::Value;
use ferry_coordinator::registry::{router, Registry};
use rdkafka::ClientConfig;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::easy_avro::{EasyAvroDecoder, EasyAvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{
    get_all_subjects, get_all_versions, get_schema_by_id, get_schema_by_subject, SrSettings,
};
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde_json::{json, Value as Json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const USER_V1: &str = r#"{"type":"record","name":"User","namespace":"ferry.test","fields":[
    {"name":"id","type":"long"},
    {"name":"name","type":"string"}]}"#;
const USER_V2: &str = r#"{"type":"record","name":"User","namespace":"ferry.test","fields":[
    {"name":"id","type":"long"},
    {"name":"name","type":"string"},
    {"name":"email","type":["null","string"],"default":null}]}"#;
/// `name` changed from string to int: old data cannot be read.
const USER_BAD_TYPE: &str = r#"{"type":"record","name":"User","namespace":"ferry.test","fields":[
    {"name":"id","type":"long"},
    {"name":"name","type":"int"},
    {"name":"email","type":["null","string"],"default":null}]}"#;
/// `name` removed: the latest version (no default for `name`) cannot read new data.
const USER_NO_NAME: &str = r#"{"type":"record","name":"User","namespace":"ferry.test","fields":[
    {"name":"id","type":"long"},
    {"name":"email","type":["null","string"],"default":null}]}"#;

fn kafka() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set(
        "bootstrap.servers",
        &ferry_testkit::Stack::get().kafka_bootstrap,
    );
    config
}

/// A registry served over HTTP on a free port.
struct Served {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn start(topic: &str) -> Result<Served> {
        let registry = Arc::new(Registry::open(kafka(), topic.to_string()).await?);
        let port = ferry_testkit::free_port();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router(registry))
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Served {
            url: format!("http://127.0.0.1:{port}"),
            stop: Some(stop),
            task,
        })
    }

    /// Stops the server and drops the registry with it.
    async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await??;
        Ok(())
    }

    fn settings(&self) -> SrSettings {
        SrSettings::new(self.url.clone())
    }
}

/// A raw call; returns the status, the content type and the body as JSON.
async fn call(method: &str, url: &str, body: Option<Json>) -> Result<(u16, String, Json)> {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await?;
    let json = serde_json::from_str(&text).with_context(|| format!("body {text:?}"))?;
    Ok((status, content_type, json))
}

fn avro(schema: &str) -> SuppliedSchema {
    SuppliedSchema::new(None, SchemaType::Avro, schema.to_string())
}

fn user(id: i64, name: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("id", Value::Long(id)),
        ("name", Value::String(name.to_string())),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_serves_confluent_clients_and_enforces_compatibility() -> Result<()> {
    let registry_topic = ferry_testkit::unique_name("registry");
    let data_topic = ferry_testkit::unique_name("users");
    let subject = format!("{data_topic}-value");
    let served = Served::start(&registry_topic).await?;
    let sr = served.settings();

    // Register v1 through the encoder, encode, decode back.
    let encoder = AvroEncoder::new(sr.clone());
    let decoder = AvroDecoder::new(sr.clone());
    let v1_strategy =
        SubjectNameStrategy::TopicNameStrategyWithSchema(data_topic.clone(), false, avro(USER_V1));
    let bytes = encoder.encode(user(1, "ada"), v1_strategy.clone()).await?;
    ensure!(
        bytes[0] == 0 && bytes[1..5] == [0, 0, 0, 1],
        "wire header {:?}",
        &bytes[..5]
    );
    let decoded = decoder.decode(Some(&bytes)).await?;
    assert_eq!(
        decoded.value,
        Value::Record(vec![
            ("id".into(), Value::Long(1)),
            ("name".into(), Value::String("ada".into())),
        ])
    );

    // Latest by subject; registering the same schema again returns the same id.
    let latest = get_schema_by_subject(
        &sr,
        &SubjectNameStrategy::TopicNameStrategy(data_topic.clone(), false),
    )
    .await?;
    assert_eq!((latest.id, latest.version), (1, Some(1)));
    assert_eq!(latest.schema, USER_V1);
    let again = get_schema_by_subject(&sr, &v1_strategy).await?;
    assert_eq!(again.id, 1);
    assert_eq!(get_all_versions(&sr, subject.clone()).await?, vec![1]);

    // Evolution with a defaulted field: new version and id, old data still decodes.
    let easy = EasyAvroEncoder::new(sr.clone());
    let v2 = get_schema_by_subject(
        &sr,
        &SubjectNameStrategy::TopicNameStrategyWithSchema(data_topic.clone(), false, avro(USER_V2)),
    )
    .await?;
    assert_eq!(v2.id, 2);
    assert_eq!(get_all_versions(&sr, subject.clone()).await?, vec![1, 2]);
    let mut v2_values = user(2, "grace");
    v2_values.push((
        "email",
        Value::Union(1, Box::new(Value::String("g@x".into()))),
    ));
    let v2_bytes = easy
        .encode(
            v2_values,
            SubjectNameStrategy::TopicNameStrategyWithSchema(
                data_topic.clone(),
                false,
                avro(USER_V2),
            ),
        )
        .await?;
    assert_eq!(v2_bytes[1..5], [0, 0, 0, 2]);
    let easy_decoder = EasyAvroDecoder::new(sr.clone());
    let decoded = easy_decoder.decode(Some(&v2_bytes)).await?;
    let Value::Record(fields) = decoded.value else {
        panic!("not a record: {:?}", decoded.value);
    };
    assert_eq!(fields.len(), 3);
    assert_eq!(get_all_subjects(&sr).await?, vec![subject.clone()]);

    // The same schema under another subject keeps its global id.
    let other = format!("{data_topic}-key");
    let (status, content_type, body) = call(
        "POST",
        &format!("{}/subjects/{other}/versions", served.url),
        Some(json!({"schema": USER_V1})),
    )
    .await?;
    assert_eq!((status, body), (200, json!({"id": 1})));
    assert_eq!(content_type, "application/vnd.schemaregistry.v1+json");

    // Incompatible (BACKWARD): refused through the client (a fresh encoder: encoders cache
    // the schema per subject)...
    let refused = AvroEncoder::new(sr.clone())
        .encode(
            vec![("id", Value::Long(3)), ("name", Value::Int(3))],
            SubjectNameStrategy::TopicNameStrategyWithSchema(
                data_topic.clone(),
                false,
                avro(USER_BAD_TYPE),
            ),
        )
        .await
        .expect_err("an incompatible schema must be refused");
    let shown = refused.to_string();
    assert!(shown.contains("409"), "{shown}");
    assert!(shown.contains(&subject), "{shown}");
    // ...and over raw HTTP, in Confluent's error shape.
    let (status, _, body) = call(
        "POST",
        &format!("{}/subjects/{subject}/versions", served.url),
        Some(json!({"schema": USER_BAD_TYPE, "schemaType": "AVRO", "references": []})),
    )
    .await?;
    assert_eq!(status, 409);
    assert_eq!(body["error_code"], 409);
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(&subject), "{message}");
    assert!(message.contains("/fields/1/type"), "{message}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(2), "{body}");
    assert_eq!(get_all_versions(&sr, subject.clone()).await?, vec![1, 2]);

    // The compatibility endpoints say the same, with reasons when verbose.
    let (status, _, body) = call(
        "POST",
        &format!(
            "{}/compatibility/subjects/{subject}/versions/latest?verbose=true",
            served.url
        ),
        Some(json!({"schema": USER_BAD_TYPE})),
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(body["is_compatible"], false);
    assert!(
        !body["messages"].as_array().is_none_or(Vec::is_empty),
        "{body}"
    );
    let (_, _, body) = call(
        "POST",
        &format!("{}/compatibility/subjects/{subject}/versions", served.url),
        Some(json!({"schema": USER_NO_NAME})),
    )
    .await?;
    assert_eq!(body, json!({"is_compatible": true}));

    // Under FORWARD, removing a field without default is refused.
    let (status, _, body) = call(
        "PUT",
        &format!("{}/config/{subject}", served.url),
        Some(json!({"compatibility": "FORWARD"})),
    )
    .await?;
    assert_eq!((status, body), (200, json!({"compatibility": "FORWARD"})));
    let (status, _, body) = call(
        "POST",
        &format!("{}/subjects/{subject}/versions", served.url),
        Some(json!({"schema": USER_NO_NAME})),
    )
    .await?;
    assert_eq!(
        (status, body["error_code"].clone()),
        (409, json!(409)),
        "{body}"
    );
    let (_, _, body) = call("GET", &format!("{}/config/{subject}", served.url), None).await?;
    assert_eq!(body, json!({"compatibilityLevel": "FORWARD"}));
    let (_, _, body) = call("GET", &format!("{}/config", served.url), None).await?;
    assert_eq!(body, json!({"compatibilityLevel": "BACKWARD"}));

    // Lookup, by-id and error codes.
    let (status, _, body) = call(
        "POST",
        &format!("{}/subjects/{subject}?deleted=false", served.url),
        Some(json!({"schema": USER_V2})),
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(
        (body["id"].clone(), body["version"].clone()),
        (json!(2), json!(2))
    );
    let (status, _, body) = call(
        "POST",
        &format!("{}/subjects/{subject}", served.url),
        Some(json!({"schema": USER_NO_NAME})),
    )
    .await?;
    assert_eq!((status, body["error_code"].clone()), (404, json!(40403)));
    let (status, _, body) = call(
        "GET",
        &format!("{}/subjects/nope/versions/latest", served.url),
        None,
    )
    .await?;
    assert_eq!((status, body["error_code"].clone()), (404, json!(40401)));
    let (status, _, body) = call(
        "GET",
        &format!("{}/subjects/{subject}/versions/9", served.url),
        None,
    )
    .await?;
    assert_eq!((status, body["error_code"].clone()), (404, json!(40402)));
    let (status, _, body) = call(
        "GET",
        &format!("{}/subjects/{subject}/versions/zero", served.url),
        None,
    )
    .await?;
    assert_eq!((status, body["error_code"].clone()), (422, json!(42202)));
    let (status, _, body) = call("GET", &format!("{}/schemas/ids/99", served.url), None).await?;
    assert_eq!((status, body["error_code"].clone()), (404, json!(40403)));
    let (status, _, body) = call(
        "POST",
        &format!("{}/subjects/{subject}/versions", served.url),
        Some(json!({"schema": "{\"type\":\"record\""})),
    )
    .await?;
    assert_eq!((status, body["error_code"].clone()), (422, json!(42201)));
    let (status, _, body) = call(
        "POST",
        &format!("{}/subjects/{subject}/versions", served.url),
        Some(json!({"schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF"})),
    )
    .await?;
    assert_eq!((status, body["error_code"].clone()), (422, json!(42201)));
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("AVRO"),
        "{body}"
    );
    let (status, _, body) = call(
        "GET",
        &format!("{}/subjects/{subject}/versions/1/schema", served.url),
        None,
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::from_str::<Json>(USER_V1)?);
    let (status, _, body) = call(
        "GET",
        &format!("{}/schemas/ids/2?subject={subject}", served.url),
        None,
    )
    .await?;
    assert_eq!((status, body), (200, json!({"schema": USER_V2})));
    let (status, _, body) = call(
        "GET",
        &format!("{}/schemas/ids/2?subject={other}", served.url),
        None,
    )
    .await?;
    assert_eq!((status, body["error_code"].clone()), (404, json!(40403)));
    let (_, _, body) = call(
        "GET",
        &format!("{}/schemas/ids/1/versions", served.url),
        None,
    )
    .await?;
    assert_eq!(
        body,
        json!([{"subject": other, "version": 1}, {"subject": subject, "version": 1}])
    );

    served.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_ids_versions_and_deletes_survive_a_restart() -> Result<()> {
    let registry_topic = ferry_testkit::unique_name("registry");
    let a = ferry_testkit::unique_name("a");
    let b = ferry_testkit::unique_name("b");
    // Odd spacing: the registry must return the string exactly as registered.
    let v1 = USER_V1.replace("\"long\"", " \"long\" ");

    let served = Served::start(&registry_topic).await?;
    let mut ids = Vec::new();
    for (subject, schema) in [(&a, v1.as_str()), (&a, USER_V2), (&b, USER_V2)] {
        let (status, _, body) = call(
            "POST",
            &format!("{}/subjects/{subject}/versions", served.url),
            Some(json!({"schema": schema})),
        )
        .await?;
        assert_eq!(status, 200, "{body}");
        ids.push(body["id"].clone());
    }
    assert_eq!(ids, vec![json!(1), json!(2), json!(2)]);
    let (_, _, deleted) = call(
        "DELETE",
        &format!("{}/subjects/{a}/versions/2", served.url),
        None,
    )
    .await?;
    assert_eq!(deleted, json!(2));
    let (_, _, deleted) = call("DELETE", &format!("{}/subjects/{b}", served.url), None).await?;
    assert_eq!(deleted, json!([1]));
    call(
        "PUT",
        &format!("{}/config", served.url),
        Some(json!({"compatibility": "FULL_TRANSITIVE"})),
    )
    .await?;

    let snapshot = |url: String| {
        let a = a.clone();
        let b = b.clone();
        async move {
            let mut out = Vec::new();
            for path in [
                "/subjects".to_string(),
                "/subjects?deleted=true".to_string(),
                format!("/subjects/{a}/versions"),
                format!("/subjects/{a}/versions?deleted=true"),
                format!("/subjects/{a}/versions/latest"),
                format!("/subjects/{a}/versions/2?deleted=true"),
                format!("/subjects/{b}/versions"),
                "/schemas/ids/1".to_string(),
                "/schemas/ids/2".to_string(),
                "/schemas/ids/2?deleted=true".to_string(),
                "/config".to_string(),
            ] {
                let (status, _, body) = call("GET", &format!("{url}{path}"), None).await?;
                out.push((path, status, body));
            }
            anyhow::Ok(out)
        }
    };
    let before = snapshot(served.url.clone()).await?;
    served.stop().await?;

    let served = Served::start(&registry_topic).await?;
    let after = snapshot(served.url.clone()).await?;
    assert_eq!(before, after);
    // Spot checks that the snapshot holds what it should.
    assert_eq!(after[2].2, json!([1]));
    assert_eq!(after[3].2, json!([1, 2]));
    assert_eq!(after[6].1, 404);
    assert_eq!(
        after[10].2,
        json!({"compatibilityLevel": "FULL_TRANSITIVE"})
    );

    // The schema by id is the original string, through the client too.
    let by_id = get_schema_by_id(1, &served.settings()).await?;
    assert_eq!(by_id.schema, v1);
    // Re-registering a known schema keeps its id; a new one gets the next id, not a reused one.
    let (_, _, body) = call(
        "POST",
        &format!("{}/subjects/{b}/versions", served.url),
        Some(json!({"schema": USER_V2})),
    )
    .await?;
    assert_eq!(body, json!({"id": 2}));
    let (_, _, body) = call(
        "GET",
        &format!("{}/subjects/{b}/versions/latest", served.url),
        None,
    )
    .await?;
    assert_eq!(body["version"], 2);
    let (_, _, body) = call(
        "POST",
        &format!(
            "{}/subjects/{}/versions",
            served.url,
            ferry_testkit::unique_name("c")
        ),
        Some(json!({"schema": "\"string\""})),
    )
    .await?;
    assert_eq!(body, json!({"id": 3}));

    served.stop().await
}
