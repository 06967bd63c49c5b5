//! Fields the API accepts that this version does not act on. An endpoint that sets one is never
//! READY (the operator's `Supported` and `Ready` conditions name the field, with a Warning
//! event) and standalone mode refuses it, so nobody mistakes an ignored policy for an enforced
//! one.

use sluice_crds::ServingEndpoint;

/// The fields of `ep` this version ignores, each named with what is not done.
pub fn unsupported_fields(ep: &ServingEndpoint) -> Vec<String> {
    let mut fields = Vec::new();
    if ep
        .spec
        .ai_gateway
        .as_ref()
        .and_then(|g| g.guardrails.as_ref())
        .and_then(|g| g.output.as_ref())
        .is_some_and(|o| !o.valid_topics.is_empty())
    {
        fields.push(
            "spec.aiGateway.guardrails.output.validTopics (topics are checked on requests only)"
                .to_string(),
        );
    }
    for (i, e) in ep.spec.served_entities.iter().enumerate() {
        let Some(external) = &e.external_model else {
            continue;
        };
        if let Err(problems) = crate::external::api(external) {
            for problem in problems {
                fields.push(format!(
                    "spec.servedEntities[{i}].externalModel.{problem} (entity {})",
                    e.name
                ));
            }
        }
    }
    fields
}

/// The message that names `fields`.
pub fn unsupported_message(fields: &[String]) -> String {
    format!(
        "not supported by this version of Sluice: {}; remove the field{} or upgrade",
        fields.join("; "),
        if fields.len() == 1 { "" } else { "s" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_policies_act_and_output_topics_are_named() {
        let limited = crate::fixtures::endpoint(
            "ep",
            "  servedEntities:\n  - {name: a, model: m, version: 1}\n  aiGateway:\n    rateLimits: [{calls: 10, key: endpoint, renewalPeriod: minute}]\n    usageTracking: {enabled: true}\n    fallback: {enabled: true}\n    guardrails: {input: {pii: {behavior: BLOCK}}, output: {invalidKeywords: [z]}}\n",
        );
        assert!(unsupported_fields(&limited).is_empty());
        let guarded = crate::fixtures::endpoint(
            "ep",
            "  servedEntities:\n  - {name: a, model: m, version: 1}\n  aiGateway:\n    guardrails: {input: {invalidKeywords: [x]}, output: {pii: {behavior: MASK}, validTopics: [y]}}\n    fallback: {enabled: true}\n    usageTracking: {enabled: true}\n",
        );
        let fields = unsupported_fields(&guarded);
        assert_eq!(fields.len(), 1, "{fields:?}");
        assert!(fields[0].starts_with("spec.aiGateway.guardrails.output.validTopics"));
        assert!(unsupported_message(&fields).ends_with("remove the field or upgrade"));
    }

    #[test]
    fn external_entities_are_called_unless_the_provider_cannot_be() {
        let called = crate::fixtures::endpoint(
            "ep",
            "  servedEntities:\n  - {name: a, externalModel: {provider: anthropic, name: claude, task: llm/v1/chat}}\n  - {name: b, externalModel: {provider: custom, name: m, task: llm/v1/chat, apiBase: 'http://127.0.0.1:1/v1'}}\n",
        );
        assert!(unsupported_fields(&called).is_empty());
        let refused = crate::fixtures::endpoint(
            "ep",
            "  servedEntities:\n  - {name: a, externalModel: {provider: cohere, name: c, task: llm/v1/chat}}\n  autoCapture: {enabled: true}\n",
        );
        let fields = unsupported_fields(&refused);
        assert_eq!(fields.len(), 1, "{fields:?}");
        assert!(fields[0].starts_with("spec.servedEntities[0].externalModel.provider cohere"));
    }
}
