//! `fake-coinapi-ws`: a local stand-in for CoinAPI's exchange-rate WebSocket, for the freshness
//! benchmark. Prints `PORT=<port>`, then to each connection that says hello sends `--rate` exrate
//! messages per second over the pairs the hello subscribed (round robin), each stamped with the
//! time it is sent (seven fractional digits, as CoinAPI writes them), for `--seconds`, then
//! heartbeats until the client goes.

use std::time::Duration;

use chrono::Utc;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    #[arg(long, default_value_t = 30)]
    seconds: u64,
}

async fn serve(tcp: tokio::net::TcpStream, rate: f64, seconds: u64) -> anyhow::Result<()> {
    let mut ws = tokio_tungstenite::accept_async(tcp).await?;
    let Some(Ok(Message::Text(hello))) = ws.next().await else {
        anyhow::bail!("no hello");
    };
    let hello: serde_json::Value = serde_json::from_str(hello.as_str())?;
    let pairs: Vec<String> = serde_json::from_value(hello["subscribe_filter_asset_id"].clone())?;
    anyhow::ensure!(!pairs.is_empty(), "no pairs subscribed");
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut n = 0u64;
    while tokio::time::Instant::now() < until {
        tick.tick().await;
        let pair = &pairs[(n as usize) % pairs.len()];
        let (base, quote) = pair.split_once('/').unwrap_or((pair, "USD"));
        let now = Utc::now();
        let text = serde_json::json!({
            "type": "exrate", "asset_id_base": base, "asset_id_quote": quote,
            "rate_type": "BASE_ALL_CROSSES_TO_REF",
            "time": format!("{}0Z", now.format("%Y-%m-%dT%H:%M:%S%.6f")),
            "rate": 100.0 + (n % 1000) as f64 / 10.0,
        });
        ws.send(Message::text(text.to_string())).await?;
        n += 1;
    }
    eprintln!("sent {n} exrates");
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        ws.send(Message::text(r#"{"type":"hearbeat"}"#)).await?;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("PORT={}", listener.local_addr()?.port());
    loop {
        let (tcp, _) = listener.accept().await?;
        let (rate, seconds) = (args.rate, args.seconds);
        tokio::spawn(async move {
            if let Err(e) = serve(tcp, rate, seconds).await {
                eprintln!("connection ended: {e}");
            }
        });
    }
}
