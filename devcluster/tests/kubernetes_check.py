"""Drives the devcluster with the official kubernetes Python client, as a user's script would:
discovery (which it asks with a trailing slash), a Deployment scaled through its scale
subresource, a list read in pages, and the access review clients ask before acting.

Usage: kubernetes_check.py KUBECONFIG. Prints one JSON object of what the client parsed.
"""
import json
import sys

from kubernetes import client, config

config.load_kube_config(sys.argv[1])
api = client.ApiClient()
core, apps = client.CoreV1Api(api), client.AppsV1Api(api)

versions = client.CoreApi(api).get_api_versions().versions
groups = [g.name for g in client.ApisApi(api).get_api_versions().groups]
version = client.VersionApi(api).get_code().git_version

deployment = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="py"),
    spec=client.V1DeploymentSpec(
        replicas=1,
        selector=client.V1LabelSelector(match_labels={"app": "py"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "py"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox", command=["sleep", "300"])]),
        ),
    ),
)
created = apps.create_namespaced_deployment("default", deployment)
apps.patch_namespaced_deployment_scale("py", "default", {"spec": {"replicas": 3}})
scale = apps.read_namespaced_deployment_scale("py", "default")

for name in ["a", "b", "c"]:
    labelled = client.V1ObjectMeta(name=f"page-{name}", labels={"set": "page"})
    core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=labelled))
pages, token = [], None
while True:
    listed = core.list_namespaced_config_map("default", label_selector="set=page", limit=2, _continue=token)
    pages.append([m.metadata.name for m in listed.items])
    token = listed.metadata._continue
    if not token:
        break

review = client.AuthorizationV1Api(api).create_self_subject_access_review(
    client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
        resource_attributes=client.V1ResourceAttributes(verb="delete", resource="deployments", group="apps"))))
apps.delete_namespaced_deployment("py", "default")

print(json.dumps({
    "versions": versions, "groups": groups, "version": version,
    "created_status": created.status is not None,
    "scale": [scale.spec.replicas, scale.status.selector],
    "pages": pages,
    "allowed": review.status.allowed,
}))
