//! Bodies stream through the sidecar: a streamed chat reaches the client chunk by chunk and is
//! stored as one reassembled `chat.completion` with its token counts; a body larger than the
//! capture cap passes through whole while its row is cut and says so; sampling records the
//! chosen fraction.

mod capture_support;

use std::time::Instant;

use capture_support::{
    CHAT_WORDS, CHUNK_PAUSE, Sidecar, Upstream, error_codes, int64s, read_local_table, strings,
    temp_dir,
};
use futures::StreamExt;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_chat_flows_through_and_is_stored_reassembled() {
    let upstream = Upstream::start().await;
    let table = temp_dir("stream-table");
    let mut sidecar = Sidecar::start(
        &upstream.addr.to_string(),
        table.to_str().unwrap(),
        &temp_dir("stream-spool"),
        &[],
        &[],
    )
    .await;
    let started = Instant::now();
    let response = sidecar
        .client
        .post(sidecar.url("/v1/chat/completions"))
        .json(
            &json!({"model": "tiny", "stream": true, "client_request_id": "chat-1",
                      "messages": [{"role": "user", "content": "What is an iris?"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    let first_at = started.elapsed();
    let mut raw = first.to_vec();
    while let Some(chunk) = stream.next().await {
        raw.extend_from_slice(&chunk.unwrap());
    }
    let total = started.elapsed();
    // 8 events, each after a pause: the first must arrive long before the last.
    assert!(
        first_at < total / 2 && total >= CHUNK_PAUSE * 7,
        "the stream was buffered: first chunk after {first_at:?}, all after {total:?}"
    );
    let raw = String::from_utf8(raw).unwrap();
    assert_eq!(
        raw.matches("data: ").count(),
        9,
        "every event passes: {raw}"
    );
    assert!(raw.ends_with("data: [DONE]\n\n"));

    // A plain chat too, for the token counts of a non-streamed answer.
    let plain: Value = sidecar
        .client
        .post(sidecar.url("/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "again"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plain["object"], "chat.completion");
    sidecar.terminate();

    let batches = read_local_table(&table);
    let responses = strings(&batches, "response");
    assert_eq!(responses.len(), 2);
    let clients = strings(&batches, "client_request_id");
    let streamed = clients
        .iter()
        .position(|c| c.as_deref() == Some("chat-1"))
        .expect("the client_request_id in the body is recorded");
    let body: Value = serde_json::from_str(responses[streamed].as_deref().unwrap()).unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["id"], "chatcmpl-1");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        CHAT_WORDS.concat()
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["total_tokens"], 16);
    assert_eq!(int64s(&batches, "input_token_count"), [Some(11), Some(11)]);
    assert_eq!(int64s(&batches, "output_token_count"), [Some(5), Some(5)]);
    assert!(error_codes(&batches).iter().all(Vec::is_empty));
    let metadata_types = strings(&batches, "request");
    assert!(
        metadata_types[streamed]
            .as_deref()
            .unwrap()
            .contains("What is an iris?")
    );
    let times = int64s(&batches, "execution_time_ms");
    assert!(
        times[streamed].unwrap() >= (CHUNK_PAUSE * 7).as_millis() as i64,
        "execution time runs to the last byte: {times:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_pass_whole_while_their_copy_is_cut() {
    let upstream = Upstream::start().await;
    let table = temp_dir("cut-table");
    let mut sidecar = Sidecar::start(
        &upstream.addr.to_string(),
        table.to_str().unwrap(),
        &temp_dir("cut-spool"),
        &["--max-payload-bytes", "1000"],
        &[],
    )
    .await;
    let body: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let echoed = sidecar
        .client
        .post(sidecar.url("/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        echoed.as_ref(),
        body.as_slice(),
        "the body passes through whole"
    );
    let small = sidecar
        .client
        .post(sidecar.url("/echo"))
        .body("short")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(small.as_ref(), b"short");
    sidecar.terminate();

    let batches = read_local_table(&table);
    let requests = strings(&batches, "request");
    let codes = error_codes(&batches);
    let big = requests
        .iter()
        .position(|r| r.as_deref() != Some("short"))
        .unwrap();
    assert_eq!(requests[big].as_deref().unwrap().len(), 1000);
    assert_eq!(
        codes[big],
        ["REQUEST_PAYLOAD_TRUNCATED", "RESPONSE_PAYLOAD_TRUNCATED"]
    );
    assert!(codes[1 - big].is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_records_about_the_chosen_fraction() {
    let upstream = Upstream::start().await;
    let table = temp_dir("sample-table");
    let mut sidecar = Sidecar::start(
        &upstream.addr.to_string(),
        table.to_str().unwrap(),
        &temp_dir("sample-spool"),
        &["--sampling-fraction", "0.25"],
        &[],
    )
    .await;
    for _ in 0..400 {
        let response = sidecar
            .client
            .post(sidecar.url("/status/429"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 429);
        assert!(response.headers().contains_key("x-request-id"));
    }
    sidecar.terminate();
    let batches = read_local_table(&table);
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    // Binomial(400, 0.25): mean 100, sd ~8.7; 60..140 is beyond 4.5 sd.
    assert!((60..140).contains(&rows), "{rows} rows");
    let sampling = batches[0]
        .column_by_name("sampling_fraction")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow_array::Float64Array>()
        .unwrap()
        .value(0);
    assert_eq!(sampling, 0.25);
}
