//! The container image's build, without a Docker engine: the Dockerfile's builder stage copies
//! `Cargo.toml`, `Cargo.lock` and `src/` into an empty directory and runs its `cargo build` line;
//! this test does exactly that (with a cached target directory, as the Dockerfile's cache mount)
//! and checks that the binary it makes runs.

use std::{path::Path, process::Command};

const BUILD: &str = "cargo build --release --locked --bin consumer-operator";

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn the_dockerfile_builder_stage_builds_a_working_binary_from_what_it_copies() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("COPY Cargo.toml Cargo.lock ./"),
        "the Dockerfile copies the manifest"
    );
    assert!(
        dockerfile.contains("COPY src ./src"),
        "the Dockerfile copies src/"
    );
    assert!(
        dockerfile.contains(BUILD),
        "the Dockerfile builds with `{BUILD}`"
    );
    let context =
        std::env::temp_dir().join(format!("consumer-operator-image-{}", std::process::id()));
    std::fs::create_dir_all(&context).unwrap();
    for file in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(root.join(file), context.join(file)).unwrap();
    }
    copy_tree(&root.join("src"), &context.join("src"));

    let mut words = BUILD.split_whitespace();
    let status = Command::new(words.next().unwrap())
        .args(words)
        .current_dir(&context)
        .env("CARGO_TARGET_DIR", root.join("target/image"))
        .status()
        .expect("run cargo");

    assert!(
        status.success(),
        "`{BUILD}` failed in the image's build context"
    );
    let binary = root.join("target/image/release/consumer-operator");
    let crd = Command::new(&binary)
        .arg("crd")
        .output()
        .expect("run the built binary");
    assert!(crd.status.success());
    let printed = String::from_utf8(crd.stdout).unwrap();
    assert!(printed.contains("name: consumers.gostoa.dev"));
    assert!(printed.contains("name: consumercertificates.gostoa.dev"));
    std::fs::remove_dir_all(&context).unwrap();
}
