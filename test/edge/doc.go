// Package edge holds the tests of a model exposed through a real edge proxy: Debian's nginx,
// configured by hand as the community ingress-nginx controller renders the Ingress the
// manager writes (testdata/nginx.conf.tmpl), in front of an embedded `runtime serve` and the
// test engine. The package has no code of its own; its tests need nginx (installed by
// hack/install-nginx.sh when missing) and are skipped with -short.
package edge
