//! Ferry's three services, in this process, each on its own tokio runtime with named
//! threads, so that the CPU of each can be told apart ([`crate::usage`]).
//!
//! This is the pattern of `tests/e2e/tests/pipeline.rs`: `ferry_coordinator::run`,
//! `ferry_exporter::run_for(Stream::Source, ..)` and
//! `ferry_importer::run_for(Destination::Target, ..)`, each with its own shutdown
//! trigger so that the exporter can be stopped and restarted alone.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ferry_shared::config::Config;
use ferry_shared::shutdown::{self, ShutdownTrigger};
use ferry_shared::topics::{Destination, Stream, Topics};
use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

/// The runtimes the services run on; built once, kept for the whole run.
pub struct Runtimes {
    coordinator: Runtime,
    exporter: Runtime,
    importer: Runtime,
}

fn runtime(name: &str, workers: usize) -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .with_context(|| format!("building the {name} runtime"))
}

impl Runtimes {
    /// One runtime per service with `workers` worker threads each (a service's own
    /// process gets one worker per core by default).
    pub fn new(workers: usize) -> Result<Runtimes> {
        Ok(Runtimes {
            coordinator: runtime("coordinator", workers)?,
            exporter: runtime("exporter", workers)?,
            importer: runtime("importer", workers)?,
        })
    }

    /// Handles to spawn on.
    pub fn handles(&self) -> Handles {
        Handles {
            coordinator: self.coordinator.handle().clone(),
            exporter: self.exporter.handle().clone(),
            importer: self.importer.handle().clone(),
        }
    }

    /// Stops the runtimes, waiting at most a few seconds for stray tasks.
    pub fn shutdown(self) {
        for rt in [self.coordinator, self.exporter, self.importer] {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// Where each service is spawned.
#[derive(Clone)]
pub struct Handles {
    coordinator: Handle,
    exporter: Handle,
    importer: Handle,
}

impl Handles {
    /// Where a `ferry` verb runs (`ferry replay`: a multi-thread runtime, one worker per
    /// core): the importer's runtime, with as many workers and idle while no importer
    /// runs. The bench's own runtime has one worker, fine for polling, not for a verb
    /// that spreads its work over the runtime's threads.
    pub fn verb(&self) -> Handle {
        self.importer.clone()
    }
}

/// One running service.
struct Service {
    name: &'static str,
    trigger: ShutdownTrigger,
    task: JoinHandle<Result<(), String>>,
}

impl Service {
    fn spawn<F, Fut, E>(name: &'static str, on: &Handle, start: F) -> Service
    where
        F: FnOnce(ferry_shared::shutdown::Shutdown) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::error::Error + Send + 'static,
    {
        let (trigger, stop) = shutdown::channel();
        let fut = start(stop);
        let task = on.spawn(async move {
            fut.await
                .map_err(|e| ferry_shared::process::error_chain(&e))
        });
        Service {
            name,
            trigger,
            task,
        }
    }

    /// Stops it and waits for it to return.
    async fn stop(self) -> Result<()> {
        self.trigger.trigger();
        match tokio::time::timeout(Duration::from_secs(60), self.task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => bail!("the {} stopped with an error: {e}", self.name),
            Ok(Err(e)) => bail!("the {} task failed: {e}", self.name),
            Err(_) => bail!("the {} did not stop within 60 s", self.name),
        }
    }

    /// An error when the service returned although nobody stopped it.
    fn check(&self) -> Result<()> {
        if self.task.is_finished() {
            bail!("the {} returned before the bench stopped it", self.name);
        }
        Ok(())
    }
}

/// Ferry, running in this process for one migration.
pub struct Ferry {
    pub config: Config,
    pub topics: Topics,
    handles: Handles,
    coordinator: Option<Service>,
    exporter: Option<Service>,
    importer: Option<Service>,
}

impl Ferry {
    /// Starts the coordinator and waits until it listens.
    pub async fn start_coordinator(config: Config, handles: Handles) -> Result<Ferry> {
        let topics = Topics::new(config.migration.topic_prefix());
        let c = config.clone();
        let coordinator = Service::spawn("coordinator", &handles.coordinator, move |stop| {
            ferry_coordinator::run(c, stop)
        });
        let ferry = Ferry {
            config,
            topics,
            handles,
            coordinator: Some(coordinator),
            exporter: None,
            importer: None,
        };
        let listen = ferry.config.coordinator.listen.clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(&listen).await.is_err() {
            ferry.check()?;
            if Instant::now() > deadline {
                bail!("the coordinator did not listen on {listen} within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(ferry)
    }

    /// Starts the source stream's exporter.
    pub fn start_exporter(&mut self) {
        let c = self.config.clone();
        self.exporter = Some(Service::spawn(
            "exporter",
            &self.handles.exporter,
            move |stop| ferry_exporter::run_for(Stream::Source, c, stop),
        ));
    }

    /// Waits until the exporter created the topic of `table`, then starts the target's
    /// importer (its subscription then matches at once instead of at the next metadata
    /// refresh).
    pub async fn start_importer_after_topic(&mut self, table: &str) -> Result<()> {
        let topic = self.topics.table(Stream::Source, "public", table);
        let kafka = self.config.kafka.client_config();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            self.check()?;
            let names = ferry_shared::kafka::list_topics(&kafka, &topic)
                .await
                .unwrap_or_default();
            if names.contains(&topic) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the exporter did not create topic {topic} within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let c = self.config.clone();
        self.importer = Some(Service::spawn(
            "importer",
            &self.handles.importer,
            move |stop| ferry_importer::run_for(Destination::Target, c, stop),
        ));
        Ok(())
    }

    /// An error when a service returned on its own (it failed).
    pub fn check(&self) -> Result<()> {
        for s in [&self.coordinator, &self.exporter, &self.importer]
            .into_iter()
            .flatten()
        {
            s.check()?;
        }
        Ok(())
    }

    /// Stops the exporter alone (the importer and coordinator go on).
    pub async fn stop_exporter(&mut self) -> Result<()> {
        match self.exporter.take() {
            Some(s) => s.stop().await,
            None => Ok(()),
        }
    }

    /// Stops every service: importer, exporter, coordinator. Returns the first error.
    pub async fn stop(&mut self) -> Result<()> {
        let mut first: Option<anyhow::Error> = None;
        for s in [
            self.importer.take(),
            self.exporter.take(),
            self.coordinator.take(),
        ]
        .into_iter()
        .flatten()
        {
            if let Err(e) = s.stop().await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The service that failed, with its error, if one returned.
    pub async fn failure(&mut self) -> Option<anyhow::Error> {
        for slot in [
            &mut self.coordinator,
            &mut self.exporter,
            &mut self.importer,
        ] {
            if slot.as_ref().is_some_and(|s| s.task.is_finished()) {
                let s = slot.take()?;
                let name = s.name;
                return Some(match s.task.await {
                    Ok(Ok(())) => anyhow!("the {name} returned before the bench stopped it"),
                    Ok(Err(e)) => anyhow!("the {name} failed: {e}"),
                    Err(e) => anyhow!("the {name} task failed: {e}"),
                });
            }
        }
        None
    }
}
