// Starts Swagger UI on this server's own OpenAPI document. A separate file, not an
// inline script, so the page's CSP can stay script-src 'self'.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: {{ spec_url|tojson }},
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // The default sends the document to a public validator: nothing leaves this origin.
    validatorUrl: null
  });
});
