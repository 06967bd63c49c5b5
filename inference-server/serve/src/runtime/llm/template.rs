//! Chat templates: the Jinja template a model ships (Hugging Face's `chat_template`) rendered
//! with minijinja the way `transformers`' `apply_chat_template` renders it (`trim_blocks`,
//! `lstrip_blocks`, `raise_exception`, `strftime_now`, Python string methods), or a plain
//! transcript for a model without one.

use std::path::Path;

use minijinja::{Environment, ErrorKind as JinjaErrorKind, Value as JinjaValue, context};
use serde_json::Value;

use sluice_protocol::ApiError;
use sluice_protocol::openai::ChatMessage;

/// The template of a model without its own: one `role: content` line per message, then
/// `assistant:` for the model to continue.
pub const DEFAULT_TEMPLATE: &str = "{% for message in messages %}{{ message.role }}: \
                                    {{ message.content }}\n{% endfor %}\
                                    {% if add_generation_prompt %}assistant:{% endif %}";

const TEMPLATE_NAME: &str = "chat";

/// Where a chat template came from, for logs and `/health`-style reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateSource {
    /// A file (`chat_template.jinja`, `tokenizer_config.json`).
    File(String),
    /// The GGUF file's `tokenizer.chat_template`.
    Gguf,
    /// [`DEFAULT_TEMPLATE`].
    Default,
}

/// A compiled chat template with the special tokens it may print.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Where it came from.
    pub source: TemplateSource,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ChatTemplate")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `template`; a syntax error is returned as text.
    pub fn new(
        template: String,
        bos_token: String,
        eos_token: String,
        source: TemplateSource,
    ) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<JinjaValue, _> {
                Err(minijinja::Error::new(
                    JinjaErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        env.add_function("strftime_now", |format: String| {
            chrono::Local::now().format(&format).to_string()
        });
        env.add_template_owned(TEMPLATE_NAME, template)
            .map_err(|error| format!("the chat template does not compile: {error:#}"))?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
            source,
        })
    }

    /// The template of a model without its own.
    pub fn plain() -> Self {
        // The default template is a constant that compiles; the fallback never runs.
        Self::new(
            DEFAULT_TEMPLATE.to_string(),
            String::new(),
            String::new(),
            TemplateSource::Default,
        )
        .unwrap_or_else(|error| unreachable!("the default chat template: {error}"))
    }

    /// The prompt for `messages`, ending where the assistant's answer begins.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, ApiError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|message| {
                serde_json::json!({"role": message.role, "content": message.text_content()})
            })
            .collect();
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|error| ApiError::internal(format!("the chat template is gone: {error}")))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|error| {
                // `raise_exception` is how templates reject a conversation (roles that do not
                // alternate, a system message where none is allowed): the client's fault.
                let detail = error
                    .detail()
                    .map_or_else(|| error.to_string(), str::to_string);
                ApiError::invalid(format!(
                    "the model's chat template refused the messages: {detail}"
                ))
            })
    }
}

/// A special token as `tokenizer_config.json` writes it: a string or `{"content": ...}`.
pub fn special_token(config: &Value, key: &str) -> Option<String> {
    let value = config.get(key)?;
    value
        .as_str()
        .or_else(|| value.get("content").and_then(Value::as_str))
        .map(str::to_string)
}

/// The template in `tokenizer_config.json`'s `chat_template`: a string, or a list of named
/// templates of which `default` (else the first) is taken.
pub fn config_template(config: &Value) -> Option<String> {
    match config.get("chat_template")? {
        Value::String(template) => Some(template.clone()),
        Value::Array(named) => named
            .iter()
            .find(|entry| entry.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| named.first())
            .and_then(|entry| entry.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

/// Reads `path` if it is there; an unreadable existing file is an error.
pub fn read_optional(path: &Path) -> Result<Option<String>, std::io::Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn messages() -> Vec<ChatMessage> {
        vec![
            ChatMessage::text("system", "Be brief."),
            ChatMessage::text("user", "  Hi  "),
        ]
    }

    #[test]
    fn the_default_template_is_a_transcript() {
        let prompt = ChatTemplate::plain().render(&messages()).unwrap();
        assert_eq!(prompt, "system: Be brief.\nuser:   Hi  \nassistant:");
    }

    #[test]
    fn hugging_face_templates_render_with_python_methods_and_special_tokens() {
        // The shape of Llama 2 and ChatML templates: bos_token, .strip(), raise_exception.
        let template = "{{ bos_token }}{% for m in messages %}\
            {% if m.role == 'assistant' and loop.first %}{{ raise_exception('first must be user') }}{% endif %}\
            <|im_start|>{{ m.role }}\n{{ m.content.strip() }}<|im_end|>\n{% endfor %}\
            {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let chat = ChatTemplate::new(
            template.into(),
            "<s>".into(),
            "</s>".into(),
            TemplateSource::Default,
        )
        .unwrap();
        assert_eq!(
            chat.render(&messages()).unwrap(),
            "<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let error = chat
            .render(&[ChatMessage::text("assistant", "x")])
            .unwrap_err();
        assert!(error.message.contains("first must be user"), "{error}");
        assert!(
            ChatTemplate::new(
                "{% for %}".into(),
                String::new(),
                String::new(),
                TemplateSource::Default
            )
            .is_err()
        );
    }

    #[test]
    fn tokenizer_config_fields() {
        let config = json!({
            "bos_token": {"content": "<s>", "lstrip": false},
            "eos_token": "</s>",
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
        });
        assert_eq!(special_token(&config, "bos_token").as_deref(), Some("<s>"));
        assert_eq!(special_token(&config, "eos_token").as_deref(), Some("</s>"));
        assert_eq!(config_template(&config).as_deref(), Some("D"));
        assert_eq!(
            config_template(&json!({"chat_template": "X"})).as_deref(),
            Some("X")
        );
        assert_eq!(config_template(&json!({})), None);
    }
}
