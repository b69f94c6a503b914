//! `fsync-probe`: the durability floor of this disk. Every durable message
//! costs at least one `fdatasync` of an append (amortised over a group
//! commit), so server latencies read best beside this figure.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use hdrhistogram::Histogram;

/// `fsync-probe` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to probe: put it on the disk the database lives on.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Appends to time.
    #[arg(long, default_value_t = 2000)]
    pub count: u64,
    /// Bytes per append.
    #[arg(long, default_value_t = 4096)]
    pub bytes: usize,
}

/// What the probe measured, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
}

/// Appends `bytes` and `fdatasync`s, `count` times, in a scratch file under
/// `dir` (removed afterwards).
pub fn probe(a: &Args) -> anyhow::Result<Floor> {
    let path = a
        .dir
        .join(format!(".chat-bench-fsync-{}", std::process::id()));
    let mut f = std::fs::File::create(&path)
        .with_context(|| format!("cannot create a scratch file in {}", a.dir.display()))?;
    let block = vec![0x5au8; a.bytes.max(1)];
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let result = (|| {
        for _ in 0..a.count.max(1) {
            let t = Instant::now();
            f.write_all(&block)?;
            f.sync_data()?;
            h.saturating_record(t.elapsed().as_micros() as u64);
        }
        anyhow::Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    result?;
    Ok(Floor {
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
    })
}

/// Runs the probe and prints the floor.
pub fn main(a: &Args) -> anyhow::Result<()> {
    let f = probe(a)?;
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "fsync floor ({} x fdatasync of a {} B append in {}): p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms",
        a.count,
        a.bytes,
        a.dir.display(),
        ms(f.p50_us),
        ms(f.p99_us),
        ms(f.p999_us)
    );
    Ok(())
}
