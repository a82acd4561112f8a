//! `taskorch-bench`: end-to-end figures of the engine in one process (embedded worker, no HTTP), on SQLite or
//! PostgreSQL. Prints submission time of 10,000-task DAGs, independent noop throughput, chain hop latency and a
//! 1,000-wide fan-out/fan-in. Build with `--release`; see BENCHMARKS.md for the commands and figures.

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use sea_orm::ConnectionTrait;
use taskorch_domain::{EventType, TaskSpec, TenantId, WorkflowSpec};
use taskorch_engine::Engine;
use taskorch_engine::db::{Database, PoolOptions};
use taskorch_worker::config::Config;
use taskorch_worker::{Registry, RegistryOptions, setup};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "taskorch-bench")]
struct Args {
    /// `sqlite` (a fresh file in a temp dir) or a PostgreSQL server URL (a fresh database is created on it).
    #[arg(long, default_value = "sqlite")]
    database: String,
    /// Independent noop tasks in the throughput run.
    #[arg(long, default_value_t = 20_000)]
    noop_tasks: usize,
    /// Tasks per workflow in the throughput run.
    #[arg(long, default_value_t = 100)]
    noop_batch: usize,
    /// Chains of 10 run one after the other for the hop latency.
    #[arg(long, default_value_t = 30)]
    chains: usize,
    /// RabbitMQ URL: run the queue through the broker.
    #[arg(long)]
    amqp_url: Option<String>,
    /// Redis URL: run the event bus through Redis.
    #[arg(long)]
    redis_url: Option<String>,
    /// Clients submitting the throughput run's workflows at once.
    #[arg(long, default_value_t = 4)]
    submitters: usize,
    /// Worker concurrency.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = std::env::temp_dir().join(format!("taskorch-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let (url, cleanup) = if args.database == "sqlite" {
        (format!("sqlite://{}/bench.db?mode=rwc", tmp.display()), None)
    } else {
        let admin = Database::connect(&args.database, PoolOptions::default()).await?;
        let name = format!("taskorch_bench_{}", std::process::id());
        admin.write.execute_unprepared(&format!("CREATE DATABASE {name}")).await?;
        let base = args.database.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(args.database.clone());
        (format!("{base}/{name}"), Some((admin, name)))
    };
    let backend = if cleanup.is_some() { "PostgreSQL" } else { "SQLite" };
    let mut cli = vec!["bench".to_owned(), "--database-url".to_owned(), url.clone()];
    cli.extend(["--concurrency".to_owned(), args.concurrency.to_string()]);
    cli.extend(["--namespace".to_owned(), format!("bench{}", std::process::id())]);
    if let Some(amqp) = &args.amqp_url {
        cli.extend(["--amqp-url".to_owned(), amqp.clone()]);
    }
    if let Some(redis) = &args.redis_url {
        cli.extend(["--redis-url".to_owned(), redis.clone()]);
    }
    let config = Config::parse_from(cli);
    let registry = Arc::new(Registry::with_builtins(RegistryOptions::default()));
    let backends = setup::connect(&config, config.engine_options(), registry.kinds()).await?;
    let engine = backends.engine.clone();
    let stack = match (&args.amqp_url, &args.redis_url) {
        (Some(_), Some(_)) => " + RabbitMQ + Redis",
        (Some(_), None) => " + RabbitMQ",
        (None, Some(_)) => " + Redis",
        (None, None) => " (in-process queue and bus)",
    };
    println!(
        "taskorch-bench on {backend}{stack}, {} cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );

    // 1. Submission of 10,000-task DAGs (no worker running).
    for (shape, spec) in [("chain", chain("submit-chain", 10_000)), ("fan-out", fan_out("submit-fan", 10_000))] {
        let t = Instant::now();
        engine.submit(TenantId::SYSTEM, spec).await?;
        println!("submit 10,000-task {shape:<8}  {:>8.1} ms", t.elapsed().as_secs_f64() * 1000.0);
    }
    // Those two stay unrun: start the worker for the execution figures on fresh workflows only.
    cancel_all(&engine).await?;

    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(setup::run(backends, registry, config.worker_options(), true, shutdown.clone()));

    // 2. Independent noop tasks.
    let workflows = args.noop_tasks.div_ceil(args.noop_batch);
    // Drained while submitting, so that a long submission does not let the live events overflow the receiver.
    let mut done = engine.bus().subscribe();
    let waiter = tokio::spawn(async move { wait_completed(&mut done, workflows).await });
    let t = Instant::now();
    // Several clients submit at once, as an API server's callers do; each waits for its commit.
    let clients = args.submitters.clamp(1, workflows.max(1));
    let submissions: Vec<_> = (0..clients)
        .map(|c| {
            let engine = engine.clone();
            let batch = args.noop_batch;
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for w in (c..workflows).step_by(clients) {
                    let tasks = (0..batch).map(|i| TaskSpec::new(format!("n{i}"), "noop")).collect();
                    let spec = WorkflowSpec { name: format!("noop{w}"), idempotency_key: None, tasks };
                    ids.push(engine.submit(TenantId::SYSTEM, spec).await?.id);
                }
                anyhow::Ok(ids)
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(workflows);
    for s in submissions {
        ids.extend(s.await??);
    }
    let submitted = t.elapsed().as_secs_f64();
    waiter.await??;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "independent noop tasks     {:>8.0} tasks/s  ({} tasks in {} workflows, {:.2} s, submission included: {:.2} s)",
        (workflows * args.noop_batch) as f64 / secs,
        workflows * args.noop_batch,
        workflows,
        secs,
        submitted
    );

    // 3. Chains of 10, one at a time. A hop is the time between two consecutive TASK_COMPLETED events of the chain
    // as this process receives them from the bus: the dependent's start, run and completion commit (wall clock, as
    // Celery's harness measures it; stored timestamps cannot tell when the dependent starts in the commit that
    // completed its dependency).
    let mut hops = Vec::new();
    for c in 0..args.chains {
        let mut events = engine.bus().subscribe();
        let id = engine.submit(TenantId::SYSTEM, chain(&format!("chain{c}"), 10)).await?.id;
        let mut completed = Vec::with_capacity(10);
        loop {
            let e = tokio::time::timeout(Duration::from_secs(60), events.recv()).await??;
            if e.workflow_id != id {
                continue;
            }
            match e.event_type {
                EventType::TaskCompleted => completed.push(Instant::now()),
                EventType::WorkflowCompleted => break,
                EventType::WorkflowFailed => anyhow::bail!("chain {id} failed"),
                _ => {}
            }
        }
        hops.extend(completed.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0));
    }
    hops.sort_by(f64::total_cmp);
    println!(
        "chain of 10, hop latency   p50 {:>6.2} ms  p99 {:>6.2} ms  ({} hops)",
        percentile(&hops, 0.50),
        percentile(&hops, 0.99),
        hops.len()
    );

    // 4. Fan-out 1,000 → fan-in.
    let mut done = engine.bus().subscribe();
    let t = Instant::now();
    let mut tasks = vec![TaskSpec::new("root", "noop")];
    tasks.extend((0..1000).map(|i| TaskSpec::new(format!("w{i}"), "noop").after(&["root"])));
    let leaves: Vec<String> = (0..1000).map(|i| format!("w{i}")).collect();
    let mut sink = TaskSpec::new("sink", "noop");
    sink.depends_on = leaves;
    tasks.push(sink);
    engine.submit(TenantId::SYSTEM, WorkflowSpec { name: "fan".into(), idempotency_key: None, tasks }).await?;
    wait_completed(&mut done, 1).await?;
    println!("fan-out 1,000 → fan-in     {:>8.1} ms end to end", t.elapsed().as_secs_f64() * 1000.0);

    shutdown.cancel();
    let _ = worker.await;
    drop(ids);
    if let Some((admin, name)) = cleanup {
        admin.write.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn chain(name: &str, n: usize) -> WorkflowSpec {
    let tasks = (0..n)
        .map(|i| {
            let t = TaskSpec::new(format!("t{i}"), "noop");
            if i == 0 { t } else { t.after(&[&format!("t{}", i - 1)]) }
        })
        .collect();
    WorkflowSpec { name: name.into(), idempotency_key: None, tasks }
}

fn fan_out(name: &str, n: usize) -> WorkflowSpec {
    let mut tasks = vec![TaskSpec::new("root", "noop")];
    tasks.extend((1..n).map(|i| TaskSpec::new(format!("leaf{i}"), "noop").after(&["root"])));
    WorkflowSpec { name: name.into(), idempotency_key: None, tasks }
}

async fn cancel_all(engine: &Engine) -> anyhow::Result<()> {
    let db = engine.store().database();
    db.write.execute_unprepared("UPDATE workflow SET status = 'CANCELLED'").await?;
    db.write.execute_unprepared("UPDATE task SET status = 'CANCELLED' WHERE status IN ('PENDING', 'QUEUED')").await?;
    Ok(())
}

async fn wait_completed(
    rx: &mut tokio::sync::broadcast::Receiver<Arc<taskorch_engine::model::EventRecord>>,
    n: usize,
) -> anyhow::Result<()> {
    let mut seen = 0;
    while seen < n {
        let e = tokio::time::timeout(Duration::from_secs(600), rx.recv()).await??;
        match e.event_type {
            EventType::WorkflowCompleted => seen += 1,
            EventType::WorkflowFailed => anyhow::bail!("workflow {} failed", e.workflow_id),
            _ => {}
        }
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
