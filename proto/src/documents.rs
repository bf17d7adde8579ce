//! Policy files as the API takes them: one YAML document per policy, several to a file.

/// Splits a file on its YAML document separators (lines that are `---`) and keeps the
/// documents with content (not only blank lines and comments). Each document is prefixed with
/// as many empty lines as precede it in the file, so line numbers in errors are the file's.
pub fn documents(text: &str) -> Vec<String> {
    let mut documents = Vec::new();
    let mut current = String::new();
    let mut start = 0; // Lines of the file before `current`.
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if l.trim_end() == "---" {
            push_document(&mut documents, start, &current);
            current.clear();
            start = i + 1;
        } else {
            current.push_str(l);
        }
    }
    push_document(&mut documents, start, &current);
    documents
}

fn push_document(documents: &mut Vec<String>, start: usize, text: &str) {
    let content = text.lines().any(|l| {
        let l = l.trim();
        !l.is_empty() && !l.starts_with('#')
    });
    if content {
        documents.push("\n".repeat(start) + text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(name: &str) -> String {
        format!("apiVersion: sidewall.io/v1alpha1\nkind: SidecarPolicy\nmetadata:\n  name: {name}\n")
    }

    #[test]
    fn splits_on_separator_lines_only() {
        let a = doc("a");
        let text = format!("# policies\n---\n{a}---\n\n---\r\n{a}  ---\nx: '---'\n---");
        let docs = documents(&text);
        assert_eq!(docs.len(), 2, "{docs:?}");
        // The first document starts on line 3 of the file, the second on line 10.
        assert_eq!(docs[0], format!("\n\n{a}"));
        assert_eq!(docs[1], format!("{}{a}  ---\nx: '---'\n", "\n".repeat(9)));
    }

    #[test]
    fn one_document_without_separators() {
        let a = doc("a");
        assert_eq!(documents(&a), vec![a.clone()]);
        assert_eq!(documents(&format!("---\n{a}")), vec![format!("\n{a}")]);
        assert!(documents("\n# only a comment\n---\n").is_empty());
        assert!(documents("").is_empty());
    }
}
