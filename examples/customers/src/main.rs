//! `cargo run -p customers-example`: starts the shop on the embedded PostgreSQL (or DATABASE_URL),
//! renames a customer a few times and prints the name module `orders` sees in its snapshot.

use std::time::Duration;

use customers_example::{customers, orders};
use moat::{Config, Moat};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/moat.toml");
    let app = Moat::start(Config::from_manifest(manifest)?).await?;
    let dispatcher = app.events().subscribe("orders", orders::CustomerSnapshots)?.start().await?;
    let id = customers::create(&app, "Ada").await?;
    for name in ["Ada Lovelace", "Ada King", "Augusta Ada King"] {
        customers::rename(&app, id, name).await?;
    }
    for _ in 0..50 {
        if orders::customer_name(&app, id).await?.as_deref() == Some("Augusta Ada King") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("orders sees customer {id} as {:?}", orders::customer_name(&app, id).await?);
    dispatcher.shutdown().await;
    app.close().await;
    Ok(())
}
