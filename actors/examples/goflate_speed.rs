fn main() {
    let path = std::env::args().nth(1).expect("file");
    let level: i32 = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(6);
    let data = std::fs::read(path).unwrap();
    let t = std::time::Instant::now();
    let out = stowage_actors::engine::goflate::deflate(level, &data).unwrap();
    let s = t.elapsed().as_secs_f64();
    println!(
        "level {level}: {} -> {} bytes, {:.1} MB/s",
        data.len(),
        out.len(),
        data.len() as f64 / s / 1e6
    );
}
