//! API composition over real modules: one module's read answers, another source (an HTTP
//! service that accepts and never answers) hangs; the page gets the part that answered within
//! the limit plus 50 ms.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use moat::compose::{Composed, Missing, batched, part};
use moat::{Config, Moat};
use moat_testkit::TestDb;

#[tokio::test]
async fn a_page_gets_the_parts_that_answered_when_one_module_hangs() {
    let db = TestDb::new().await;
    let project = common::project(&db);
    let app = Moat::start(Config::new(project.manifest()).database_url(db.url.expose())).await.unwrap();
    db.exec("INSERT INTO customers.customers SELECT g FROM generate_series(1, 10) g").await;
    let customers = app.pool("customers").unwrap();
    // A service that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            sockets.push(socket);
        }
    });

    let limit = Duration::from_millis(300);
    let started = Instant::now();
    let (names, applied) = tokio::join!(
        // One lookup per chunk of ids, not one per row.
        batched("customers", limit, [3, 1, 3, 7, 11], 2, |ids: Vec<i64>| {
            let pool = customers.clone();
            async move {
                let rows: Vec<(i64,)> =
                    sqlx::query_as("SELECT id FROM customers WHERE id = ANY($1)").bind(&ids).fetch_all(&pool).await?;
                Ok::<_, sqlx::Error>(rows.into_iter().map(|(id,)| (id, format!("customer {id}"))).collect())
            }
        }),
        // The orders service, now behind HTTP, hangs.
        part("orders", limit, async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(address).await?;
            stream.write_all(b"GET /orders?customer=7 HTTP/1.0\r\n\r\n").await?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        }),
    );
    let elapsed = started.elapsed();
    assert!(elapsed < limit + Duration::from_millis(50), "the page waited {elapsed:?}");
    let composed = Composed::of(&[&names, &applied]);
    assert_eq!(composed.answered, ["customers"]);
    assert_eq!(composed.missing, [("orders", Missing::TimedOut { after_ms: 300 })]);
    let names = names.into_value().unwrap();
    assert_eq!(names.len(), 3, "ids 1, 3 and 7 exist; 11 does not");
    assert_eq!(names[&7], "customer 7");
    held.abort();
    app.close().await;
}
