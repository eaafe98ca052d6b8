//! Renders a conversation with the model's own Jinja chat template (from the
//! GGUF), the way Hugging Face's `apply_chat_template` does.

use minijinja::{Environment, context, value::Serde};

use super::ChatMessage;

/// ChatML, for a model file that carries no template.
const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl ChatTemplate {
    /// Compiles `source`, or ChatML when the model has no template.
    pub fn new(source: Option<String>) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        env.add_template_owned("chat", source.unwrap_or_else(|| CHATML.to_string()))
            .map_err(|e| anyhow::anyhow!("the model's chat template does not compile: {e}"))?;
        Ok(Self { env })
    }

    /// The prompt text for `messages`, ending where the assistant speaks.
    pub fn render(&self, messages: &[ChatMessage]) -> anyhow::Result<String> {
        let template = self.env.get_template("chat")?;
        template
            .render(context! { messages => Serde(messages), add_generation_prompt => true })
            .map_err(|e| anyhow::anyhow!("rendering the chat template: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_ends_with_the_assistant_turn() {
        let template = ChatTemplate::new(None).unwrap();
        let text = template.render(&[ChatMessage::new("user", "Hi")]).unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
