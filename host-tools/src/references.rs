//! Reference captions for validation: a COCO-style annotations JSON
//! (`{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}`, or annotations
//! that carry `file_name` themselves) or `image<TAB>caption` lines. Keys are image file names.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Image file name → its reference captions (raw text, in file order).
pub type References = BTreeMap<String, Vec<String>>;

pub fn read(path: &Path) -> Result<References> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("{shown}: cannot read references"))?;
    let refs = if text.trim_start().starts_with('{') { from_coco(&text) } else { from_tsv(&text) }
        .with_context(|| format!("{shown}: bad references"))?;
    if refs.is_empty() {
        bail!("{shown}: no reference captions");
    }
    Ok(refs)
}

fn from_coco(text: &str) -> Result<References> {
    let v: Value = serde_json::from_str(text).context("invalid JSON")?;
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for img in v.get("images").and_then(Value::as_array).into_iter().flatten() {
        if let (Some(id), Some(name)) = (img.get("id"), img.get("file_name").and_then(Value::as_str)) {
            names.insert(id_key(id), name.to_string());
        }
    }
    let annotations = v.get("annotations").and_then(Value::as_array).context("no `annotations` array")?;
    let mut refs = References::new();
    for (i, a) in annotations.iter().enumerate() {
        let caption =
            a.get("caption").and_then(Value::as_str).with_context(|| format!("annotation {i}: no caption"))?;
        let name = match (a.get("file_name").and_then(Value::as_str), a.get("image_id")) {
            (Some(f), _) => f.to_string(),
            (None, Some(id)) => names.get(&id_key(id)).cloned().unwrap_or_else(|| id_key(id)),
            (None, None) => bail!("annotation {i}: neither `image_id` nor `file_name`"),
        };
        refs.entry(name).or_default().push(caption.to_string());
    }
    Ok(refs)
}

fn id_key(id: &Value) -> String {
    id.as_str().map_or_else(|| id.to_string(), str::to_string)
}

fn from_tsv(text: &str) -> Result<References> {
    let mut refs = References::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (image, caption) =
            line.split_once('\t').with_context(|| format!("line {}: expected image<TAB>caption", i + 1))?;
        refs.entry(image.trim().to_string()).or_default().push(caption.trim().to_string());
    }
    Ok(refs)
}

/// The references of an image: by file name, else by file stem (COCO ids are often numbers).
pub fn lookup<'r>(refs: &'r References, path: &Path) -> Option<&'r Vec<String>> {
    let name = path.file_name()?.to_string_lossy();
    let stem = path.file_stem()?.to_string_lossy();
    refs.get(name.as_ref()).or_else(|| refs.get(stem.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coco_and_tsv_forms() {
        let coco = r#"{"images":[{"id":7,"file_name":"cat.jpg"}],
            "annotations":[{"image_id":7,"caption":"A cat."},{"image_id":7,"caption":"a kitten"},
            {"file_name":"dog.png","caption":"a dog"}]}"#;
        let r = from_coco(coco).unwrap();
        assert_eq!(r["cat.jpg"], vec!["A cat.", "a kitten"]);
        assert_eq!(r["dog.png"], vec!["a dog"]);
        let r = from_tsv("cat.jpg\tA cat.\n\ncat.jpg\ta kitten\n").unwrap();
        assert_eq!(r["cat.jpg"].len(), 2);
        assert!(from_tsv("no tab here").is_err());
        assert!(lookup(&r, Path::new("/x/cat.jpg")).is_some());
    }
}
