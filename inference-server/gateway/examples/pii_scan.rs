//! The guardrails' PII detector over a labelled corpus, for the guardrails benchmark
//! (`inference-server/bench/guardrails.sh`): writes one line of findings per corpus line, then
//! prints how long one text takes (the corpus scanned again and again for about two seconds).
//!
//! `cargo run --release -p sluice-gateway --example pii_scan -- CORPUS.jsonl FINDINGS.jsonl`

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_gateway::guardrails::pii;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, corpus, findings] = args.as_slice() else {
        return Err("usage: pii_scan CORPUS.jsonl FINDINGS.jsonl".into());
    };
    let mut texts = Vec::new();
    for line in std::io::BufReader::new(std::fs::File::open(corpus)?).lines() {
        let row: Value = serde_json::from_str(&line?)?;
        texts.push(row["text"].as_str().unwrap_or_default().to_string());
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(findings)?);
    for text in &texts {
        let spans: Vec<Value> = pii::find(text)
            .iter()
            .map(|s| json!({"kind": s.kind.name(), "start": s.start, "end": s.end}))
            .collect();
        writeln!(out, "{}", json!({ "spans": spans }))?;
    }
    out.flush()?;
    let started = Instant::now();
    let mut scanned = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        for text in &texts {
            std::hint::black_box(pii::find(std::hint::black_box(text)));
        }
        scanned += texts.len() as u64;
    }
    let micros = started.elapsed().as_secs_f64() * 1e6 / scanned as f64;
    println!(
        "{}",
        json!({"tool": "sluice", "texts": scanned, "us_per_text": micros})
    );
    Ok(())
}
