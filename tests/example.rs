//! `examples/caption`, the engine's public API in ~30 lines, gives `edgecap caption`'s captions.

use std::process::Command;

use edgecap_tests::{binary, image, tiny_bundle};

#[test]
fn the_example_captions_as_the_cli_does() {
    let bundle = tiny_bundle();
    let images = [image("astronaut.jpg"), image("coffee.webp")];
    let run = |name: &str, args: &[&str]| {
        let out = Command::new(binary(name)).args(args).arg(bundle).args(&images).output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let example = run("edgecap-example-caption", &[]);
    assert_eq!(example, run("edgecap", &["caption", "--bundle"]));
    assert_eq!(example.lines().count(), images.len(), "{example}");
}
