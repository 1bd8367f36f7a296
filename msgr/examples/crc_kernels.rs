//! Times the CRC-32C kernels a message's data crc can run on, on this CPU: the one
//! `ceph_crc32c` picks, the three-chain kernel it picks where the CPU lacks AVX-512
//! VPCLMULQDQ (called directly, whatever this CPU has), crc-fast's own dispatch, and
//! the crc32c crate's.
//!
//! ```text
//! cargo run --release -p msgr-core --example crc_kernels -- [MIB_PER_SIZE]
//! ```
//!
//! Prints ns per call at each size from 512 bytes to 1 MiB, best of three passes of
//! MIB_PER_SIZE (default 256) MiB each. Every kernel's result is checked against the
//! chosen one's before it is timed.

use std::hint::black_box;
use std::time::Instant;

use msgr_core::proto::crc::{ceph_crc32c, ceph_crc32c_streams};

type Kernel = (&'static str, fn(&[u8]) -> u32);

fn chosen(d: &[u8]) -> u32 {
    ceph_crc32c(0xFFFF_FFFF, d)
}

fn three_chains(d: &[u8]) -> u32 {
    // `main` drops this kernel where the CPU cannot run it.
    ceph_crc32c_streams(0xFFFF_FFFF, d).unwrap_or_default()
}

fn crc_fast(d: &[u8]) -> u32 {
    !crc_fast::crc32_iscsi(d)
}

fn crc32c_crate(d: &[u8]) -> u32 {
    !crc32c::crc32c(d)
}

fn main() {
    let mib: usize = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 256,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: crc_kernels [MIB_PER_SIZE]   (a whole number above 0)");
            std::process::exit(2);
        }
    };
    let mut kernels: Vec<Kernel> = vec![("ceph_crc32c", chosen), ("crc-fast", crc_fast), ("crc32c", crc32c_crate)];
    if ceph_crc32c_streams(0, &[]).is_some() {
        kernels.insert(1, ("three-chain", three_chains));
    } else {
        println!("(no three-chain kernel on this CPU: it needs x86-64 with SSE 4.2 and PCLMULQDQ)");
    }
    // Eight start offsets, so that no alignment is favoured.
    let data: Vec<u8> = (0..(1u32 << 20) + 64).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    print!("{:>8}", "bytes");
    for (name, _) in &kernels {
        print!("  {name:>12}");
    }
    println!("   (ns per call)");
    for size in [512usize, 1024, 2048, 4096, 8192, 16384, 65536, 1 << 20] {
        let calls = (mib << 20) / size;
        let slice = |i: usize| &data[(i & 7) * 8..(i & 7) * 8 + size];
        let want = chosen(slice(0));
        print!("{size:>8}");
        for (name, f) in &kernels {
            assert_eq!(f(slice(0)), want, "{name} disagrees at {size} bytes");
            let best = (0..3)
                .map(|_| {
                    let t = Instant::now();
                    let mut acc = 0;
                    for i in 0..calls {
                        acc ^= f(black_box(slice(i)));
                    }
                    black_box(acc);
                    t.elapsed().as_nanos() as f64 / calls as f64
                })
                .fold(f64::INFINITY, f64::min);
            print!("  {best:>12.1}");
        }
        println!();
    }
}
