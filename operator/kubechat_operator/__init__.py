"""kubechat's operator: ChatBot resources in, Deployments + Services + ConfigMaps out."""

GROUP = "kubechat.dev"
VERSION = "v1alpha1"
PLURAL = "chatbots"
FIELD_MANAGER = "kubechat-operator"
