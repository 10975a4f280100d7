//! Apps written in Python (componentize-py) and JavaScript (componentize-js)
//! against wit/, served by meshd with wasi:config and wasi:keyvalue.

use crate::support::{shared_cache_dir, AppsDir, Client, Meshd};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_apps_use_config_and_keyvalue() {
    let apps = AppsDir::new();
    for app in ["greeter-py", "greeter-js"] {
        apps.deploy_polyglot(app);
        apps.write(&format!("{app}.toml"), "[config]\nname = \"Steelmesh\"\n");
    }
    let meshd = Meshd::builder(apps.path())
        .cache_dir(&shared_cache_dir())
        .start();
    let client = Client::http1();

    assert_eq!(
        client.get(&meshd.url("/greeter-py/")).await.text(),
        "Hello from Python, Steelmesh!"
    );
    assert_eq!(
        client.get(&meshd.url("/greeter-js/")).await.text(),
        "Hello from JavaScript, Steelmesh!"
    );

    // Each app counts its own visits: same key, separate tenants.
    for n in 1..=2 {
        let reply = client.post(&meshd.url("/greeter-py/visits"), "").await;
        assert_eq!(reply.text(), n.to_string());
    }
    assert_eq!(
        client
            .post(&meshd.url("/greeter-js/visits"), "")
            .await
            .text(),
        "1"
    );
    assert_eq!(
        client.get(&meshd.url("/greeter-py/visits")).await.text(),
        "2"
    );
    assert_eq!(
        client.get(&meshd.url("/greeter-js/visits")).await.text(),
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_app_without_config_uses_its_default() {
    let apps = AppsDir::new();
    apps.deploy_polyglot("greeter-py");
    let meshd = Meshd::builder(apps.path())
        .cache_dir(&shared_cache_dir())
        .start();
    assert_eq!(
        Client::http1().get(&meshd.url("/greeter-py/")).await.text(),
        "Hello from Python, world!"
    );
}
