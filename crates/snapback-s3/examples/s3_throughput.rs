//! Measures PUT and GET throughput of the S3 store against a server.
//!
//! ```text
//! eval "$(scripts/s3-server.sh start)"
//! cargo run -p snapback-s3 --example s3_throughput -- [OBJECT_MIB] [COUNT] [THREADS]
//! ```
//!
//! Uses the standard configuration (AWS_* variables, path-style addressing)
//! and a fresh prefix in $SNAPBACK_TEST_S3_BUCKET, which it deletes after.

use std::sync::Arc;
use std::time::Instant;

use snapback_s3::{S3Config, S3Store};
use snapback_storage::Store;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let mib = args.first().copied().unwrap_or(4);
    let count = args.get(1).copied().unwrap_or(32);
    let threads = args.get(2).copied().unwrap_or(4);
    let bucket = std::env::var("SNAPBACK_TEST_S3_BUCKET")
        .map_err(|_| "set SNAPBACK_TEST_S3_BUCKET (eval \"$(scripts/s3-server.sh start)\")")?;
    let prefix = format!("bench/{}", std::process::id());
    let store = Arc::new(S3Store::open(S3Config {
        bucket,
        prefix,
        path_style: true,
        ..Default::default()
    })?);
    let size = (mib << 20) as usize;
    let data: Arc<Vec<u8>> = Arc::new(
        (0..size as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect(),
    );
    let total = (size as u64 * count) as f64 / (1u64 << 20) as f64;

    let run = |what: &str, f: Arc<dyn Fn(u64) -> Result<(), String> + Send + Sync>| {
        let t = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|th| {
                let f = Arc::clone(&f);
                std::thread::spawn(move || -> Result<(), String> {
                    let mut i = th;
                    while i < count {
                        f(i)?;
                        i += threads;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err("worker panicked".to_string()),
            }
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{what}: {count} × {mib} MiB with {threads} threads in {secs:.2}s = {:.0} MiB/s",
            total / secs
        );
        Ok(())
    };

    let (s, d) = (Arc::clone(&store), Arc::clone(&data));
    run(
        "PUT",
        Arc::new(move |i| {
            let mut obj = d.as_ref().clone();
            obj[..8].copy_from_slice(&i.to_le_bytes());
            s.put_if_absent(&format!("o{i}"), &obj)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
    )?;
    let s = Arc::clone(&store);
    run(
        "GET",
        Arc::new(move |i| {
            let got = s.get(&format!("o{i}")).map_err(|e| e.to_string())?;
            if got.len() != size {
                return Err(format!("o{i}: {} bytes", got.len()));
            }
            Ok(())
        }),
    )?;
    println!("{:?}", store.request_stats());
    for i in 0..count {
        store.delete(&format!("o{i}"))?;
    }
    Ok(())
}
