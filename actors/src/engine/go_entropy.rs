//! Go's `math.Log` and `math.Log2` on amd64, operation for operation, and klauspost/compress's
//! `ShannonEntropyBits` (`compressible.go`) built on them: the entropy estimate both the zstd
//! port (`SpeedBestCompression`'s bits per byte) and the deflate port (levels 7-9 of
//! klauspost 1.14.0-1.14.1) take decisions on, so it must round as Go does.

/// Go's `math.Log` on amd64 (`log_amd64.s`, the FreeBSD algorithm) for a
/// finite x > 0, operation for operation.
fn go_log(x: f64) -> f64 {
    // The constants of log_amd64.s, by their bits.
    const HSQRT2: f64 = std::f64::consts::FRAC_1_SQRT_2; // 0x3FE6A09E667F3BCD
    let ln2_hi = f64::from_bits(0x3FE6_2E42_FEE0_0000);
    let ln2_lo = f64::from_bits(0x3DEA_39EF_3579_3C76);
    let l1 = f64::from_bits(0x3FE5_5555_5555_5593);
    let l2 = f64::from_bits(0x3FD9_9999_9997_FA04);
    let l3 = f64::from_bits(0x3FD2_4924_9422_9359);
    let l4 = f64::from_bits(0x3FCC_71C5_1D8E_78AF);
    let l5 = f64::from_bits(0x3FC7_4664_96CB_03DE);
    let l6 = f64::from_bits(0x3FC3_9A09_D078_C69F);
    let l7 = f64::from_bits(0x3FC2_F112_DF3E_5244);
    let bits = x.to_bits();
    let mut f1 = f64::from_bits((bits & 0x000F_FFFF_FFFF_FFFF) | 0x3FE0_0000_0000_0000);
    let mut k = (((bits >> 52) & 0x7FF) as i32 - 0x3FE) as f64;
    // CMPSD ..., 5 (not less than): HSqrt2 >= f1.
    if f1 <= HSQRT2 {
        k -= 1.0;
        f1 *= 2.0;
    }
    let f = f1 - 1.0;
    let s = f / (2.0 + f);
    let s2 = s * s;
    let s4 = s2 * s2;
    let t1 = s2 * (l1 + s4 * (l3 + s4 * (l5 + s4 * l7)));
    let t2 = s4 * (l2 + s4 * (l4 + s4 * l6));
    let r = t1 + t2;
    let hfsq = 0.5 * f * f;
    k * ln2_hi - ((hfsq - (s * (hfsq + r) + k * ln2_lo)) - f)
}

/// Go's `math.Log2` (via `Frexp`) for a normal x > 0.
fn go_log2(x: f64) -> f64 {
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7FF) as i32 - 0x3FE;
    let frac = f64::from_bits((bits & !(0x7FFu64 << 52)) | (0x3FEu64 << 52));
    if frac == 0.5 {
        return (exp - 1) as f64;
    }
    // Go's constant 1/Ln2 is LOG2_E (0x3FF71547652B82FE).
    go_log(frac) * std::f64::consts::LOG2_E + exp as f64
}

/// `compress.ShannonEntropyBits`.
pub(crate) fn shannon_entropy_bits(b: &[u8]) -> i64 {
    if b.is_empty() {
        return 0;
    }
    let mut hist = [0usize; 256];
    for &c in b {
        hist[c as usize] += 1;
    }
    let mut shannon = 0f64;
    let inv_total = 1.0 / b.len() as f64;
    for &v in &hist {
        if v > 0 {
            let n = v as f64;
            shannon += (-go_log2(n * inv_total) * n).ceil();
        }
    }
    shannon.ceil() as i64
}
