/* The 3-D Secure challenge's return page: tells the page that opened the
   challenge (its origin is in this page's query string, put there by the
   card field) that it is over. The message carries nothing secret. */
(function () {
  "use strict";
  var origin = new URLSearchParams(window.location.search).get("origin");
  var target = window.parent !== window ? window.parent : window.opener;
  if (target && origin && /^https?:\/\/[^/]+$/.test(origin)) {
    target.postMessage({tag: "payments-checkout-v1", type: "challenge-complete"}, origin);
  }
})();
