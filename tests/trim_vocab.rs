//! `host-tools trim-vocab`: a bundle whose LM head keeps only some tokens decodes greedily to the
//! same tokens whenever the full head's choices are kept, quantizes like any bundle, and refuses
//! what it cannot trim.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use edgecap_engine::bundle::Bundle;
use edgecap_engine::manifest::FileRole;
use edgecap_engine::model::CaptionModel;
use edgecap_engine::npy;
use edgecap_tests::{binary, export_reference, fixtures, quantize_all_int8, reference};
use host_tools::images;
use host_tools::trim::trim_bundle;

fn fp32_bundle(dir: &Path) -> PathBuf {
    export_reference(&reference("clipcap-mlp.json"), &fixtures(), &dir.join("fp32"))
}

fn greedy_tokens(model: &CaptionModel) -> Vec<Vec<u32>> {
    let opts = model.default_options();
    let samples = images::load_dir(&fixtures().join("images")).unwrap();
    samples.iter().map(|s| model.caption(&s.image, &opts).unwrap().tokens).collect()
}

#[test]
fn trimmed_head_decodes_the_same_tokens_and_quantizes() {
    let dir = tempfile::tempdir().unwrap();
    let fp32 = fp32_bundle(dir.path());
    let full = CaptionModel::load(&fp32).unwrap();
    let expected = greedy_tokens(&full);
    // Keep exactly the tokens the full head chose (and the stop tokens).
    let mut keep: BTreeSet<u32> = expected.iter().flatten().copied().collect();
    keep.extend(full.manifest.generation.stop_token_ids.iter().copied());
    let out = dir.path().join("trimmed");
    let report = trim_bundle(&Bundle::open(&fp32).unwrap(), &out, &keep).unwrap();
    assert_eq!((report.kept, report.vocab_size), (keep.len(), full.dims().vocab_size));
    assert!(keep.len() < full.dims().vocab_size / 4, "{} tokens kept", keep.len());
    assert!(report.decoder_bytes.1 < report.decoder_bytes.0);

    let trimmed = CaptionModel::load(&out).unwrap();
    assert_eq!(trimmed.dims().output_vocab_size, Some(keep.len()));
    let (shape, ids) = npy::read::<i64>(&out.join("output_ids.npy")).unwrap();
    assert_eq!(shape, vec![keep.len()]);
    assert_eq!(ids, keep.iter().map(|&t| i64::from(t)).collect::<Vec<_>>());
    assert_eq!(greedy_tokens(&trimmed), expected, "greedy tokens changed by trimming");

    // A trimmed fp32 bundle quantizes like any other; its captions use kept tokens only.
    let int8 = dir.path().join("int8");
    quantize_all_int8(&out, &int8);
    let q = CaptionModel::load(&int8).unwrap();
    assert!(q.manifest.file(FileRole::OutputIds).is_some());
    for tokens in greedy_tokens(&q) {
        assert!(tokens.iter().all(|t| keep.contains(t)), "{tokens:?}");
    }
}

#[test]
fn trim_vocab_command_reads_a_corpus_and_refuses_what_it_cannot_trim() {
    let dir = tempfile::tempdir().unwrap();
    let fp32 = fp32_bundle(dir.path());
    let corpus = dir.path().join("captions.txt");
    std::fs::write(&corpus, "a dog on a skateboard.\n\nthe cat sleeps.\n").unwrap();
    let run = |bundle: &Path, captions: &Path, out: &str| {
        let out = Command::new(binary("host-tools"))
            .args(["trim-vocab"])
            .arg(bundle)
            .arg("--captions")
            .arg(captions)
            .arg("--out")
            .arg(dir.path().join(out))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, stdout, stderr) = run(&fp32, &corpus, "small");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("LM head trimmed to"), "{stdout}");
    let small = CaptionModel::load(&dir.path().join("small")).unwrap();
    let kept = small.dims().output_vocab_size.unwrap();
    // Stop token '.', and the corpus's tokens that the fixture's 1024-token vocabulary has.
    assert!((2..40).contains(&kept), "{kept} tokens kept");
    assert_eq!(small.token_of_logit(kept - 1) as usize, {
        let (_, ids) = npy::read::<i64>(&dir.path().join("small/output_ids.npy")).unwrap();
        ids[kept - 1] as usize
    });

    // An empty corpus, a trimmed bundle again: one line each, exit 2.
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n  \n").unwrap();
    for (bundle, captions, problem) in [
        (fp32.as_path(), empty.as_path(), "no captions"),
        (&dir.path().join("small"), corpus.as_path(), "already trimmed"),
    ] {
        let (code, _, stderr) = run(bundle, captions, "refused");
        assert_eq!(code, Some(2), "{stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
        assert!(errors.len() == 1 && errors[0].contains(problem), "{stderr}");
    }
}
