package controllers

import (
	"slices"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
)

// The runtime reads its model, the namespace's ApiKeys and the JWKS, and nothing else.
func TestRuntimeRoleAndArgs(t *testing.T) {
	m := makeModel("chat").Obj()
	m.Namespace = "team-a"
	objs, err := DesiredObjects(m, nil, 1, testConfig)
	if err != nil {
		t.Fatal(err)
	}
	var role *rbacv1.Role
	var binding *rbacv1.RoleBinding
	for _, o := range objs {
		switch o := o.(type) {
		case *rbacv1.Role:
			role = o
		case *rbacv1.RoleBinding:
			binding = o
		}
	}
	if role == nil || binding == nil {
		t.Fatalf("no Role/RoleBinding among %d objects", len(objs))
	}
	for _, r := range role.Rules {
		if slices.ContainsFunc(r.Verbs, func(v string) bool { return v != "get" && v != "list" && v != "watch" }) {
			t.Errorf("rule %+v grants more than reading", r)
		}
		switch r.Resources[0] {
		case "inferencemodels":
			if !slices.Equal(r.ResourceNames, []string{"chat"}) {
				t.Errorf("inferencemodels rule not limited to the model: %+v", r)
			}
		case "configmaps":
			if !slices.Equal(r.ResourceNames, []string{"helixflow-jwks"}) {
				t.Errorf("configmaps rule not limited to the JWKS: %+v", r)
			}
		case "apikeys":
		default:
			t.Errorf("unexpected rule %+v", r)
		}
	}
	if binding.RoleRef.Name != role.Name || len(binding.Subjects) != 1 || binding.Subjects[0].Name != "chat" || binding.Subjects[0].Namespace != "team-a" {
		t.Errorf("binding %+v does not bind the role to the model's ServiceAccount", binding)
	}
	deploy := mustDeployment(t, desiredFor(m, nil, 1))
	args := findContainer(t, deploy.Spec.Template.Spec.Containers, containerRuntime).Args
	for _, want := range []string{"serve", "--model=chat", "--namespace=team-a"} {
		if !slices.Contains(args, want) {
			t.Errorf("runtime args %v lack %s", args, want)
		}
	}
}
