//! `fedgate demo [--keep DIR] [--json]`: two domains on loopback with fresh keys, the story of
//! the background article and its attacks, each step checked; exit 0 only if every step
//! behaved as expected.

use std::path::PathBuf;

use clap::Args;

use super::{print_json, usage, CliResult};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep everything in DIR (must not exist or be empty): both init directories with complete
    /// gateway.toml files, the signed agreement and each domain's audit export.
    #[arg(long)]
    pub keep: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DemoArgs) -> CliResult {
    let dir = match &args.keep {
        Some(d) => {
            if d.exists()
                && std::fs::read_dir(d)
                    .map(|mut r| r.next().is_some())
                    .unwrap_or(true)
            {
                return Err(usage(format!("{}: exists and is not empty", d.display())));
            }
            std::fs::create_dir_all(d).map_err(usage)?;
            d.clone()
        }
        None => {
            let d =
                std::env::temp_dir().join(format!("fedgate-demo-{}", crate::crypto::random_id()));
            std::fs::create_dir_all(&d).map_err(usage)?;
            d
        }
    };
    if std::env::var_os("FEDGATE_LOG").is_none() {
        std::env::set_var("FEDGATE_LOG", "error");
    }
    super::serve::init_tracing();
    let live = !args.json;
    if live {
        println!(
            "fedgate demo: company.com and vendor.example on loopback, fresh keys in {}\n",
            dir.display()
        );
    }
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(usage)?;
    let result = rt.block_on(async {
        let mut fed = crate::demo::start(&dir).await?;
        if live {
            println!(
                "  company.com    gateway {} (internal {}, admin {})\n  vendor.example gateway {} (internal {}, admin {})\n",
                fed.company.federation, fed.company.internal, fed.company.admin, fed.vendor.federation, fed.vendor.internal, fed.vendor.admin
            );
        }
        let steps = crate::demo::run_story(&mut fed, &dir, live).await;
        fed.stop().await;
        steps
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    if args.keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let steps = result.map_err(|e| usage(format!("the demo could not run: {e}")))?;
    let ok = steps.iter().all(|s| s.ok);
    if args.json {
        print_json(
            &serde_json::json!({"ok": ok, "steps": steps, "seconds": started.elapsed().as_secs_f64(), "kept": args.keep}),
        );
    } else {
        print!("{}", crate::demo::table(&steps));
        println!(
            "  finished in {:.1} s{}",
            started.elapsed().as_secs_f64(),
            args.keep
                .as_ref()
                .map(|d| format!("; everything is in {}", d.display()))
                .unwrap_or_default()
        );
    }
    Ok(if ok { 0 } else { 1 })
}
