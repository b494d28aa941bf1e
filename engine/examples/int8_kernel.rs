//! Micro-benchmark of the int8 kernel on the product shapes of a CLIP ViT-B/32 + distilgpt2
//! caption: how fast the weights stream (one row) and how many MAC/s it reaches (50 rows).
//!
//!     cargo run --release -p edgecap-engine --example int8_kernel [THREADS]
//!
//! A benchmark, not a test: it prints medians and asserts nothing.

use std::time::Instant;

use edgecap_engine::int8::kernel::{Activations, Kernel, PackedWeights, PANEL};

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|t| t.parse().ok()).unwrap_or(1);
    edgecap_engine::platform::set_threads(threads);
    let Some(kernel) = Kernel::detect() else {
        println!("no int8 kernel on this CPU");
        return;
    };
    println!("{kernel:?}, {threads} thread(s)");
    for (rows, k, n) in
        [(1, 768, 50257), (1, 768, 3072), (1, 3072, 768), (10, 768, 50257), (50, 768, 3072), (50, 3072, 768)]
    {
        let w: Vec<i8> = (0..k * n).map(|i| (i * 7 % 251) as i8).collect();
        let packed = PackedWeights::pack(kernel.layout(), &w, k, n);
        let a = Activations::new(kernel.layout(), &vec![3u8; rows * k], k, 0);
        let mut out = vec![0i32; packed.panels() * rows * PANEL];
        let mut times = Vec::new();
        for _ in 0..21 {
            let t = Instant::now();
            run(kernel, &a, rows, &packed, &mut out);
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let t = times[times.len() / 2];
        println!(
            "rows {rows:>2} k {k:>4} n {n:>5}: {:8.3} ms  {:6.1} GB/s of weights  {:6.1} GMAC/s",
            t * 1e3,
            (k * n) as f64 / t / 1e9,
            (rows * k * n) as f64 / t / 1e9
        );
    }
}

/// Every product split between THREADS (the engine's operator splits only the large ones).
fn run(kernel: Kernel, a: &Activations, rows: usize, w: &PackedWeights, out: &mut [i32]) {
    tract_linalg::multithread::par_chunks_mut(out, rows * PANEL, rows * w.k() * w.n(), |first, chunk| {
        kernel.run(a, w, first..first + chunk.len() / (rows * PANEL), chunk);
        Ok(())
    })
    .unwrap();
}
