___TERMS_OF_SERVICE___

By creating or modifying this file you agree to Google Tag Manager's Community
Template Gallery Developer Terms of Service available at
https://developers.google.com/tag-manager/gallery-tos (or such other URL as
Google may provide), as modified from time to time.


___INFO___

{
  "type": "TAG",
  "id": "cvt_temp_public_id",
  "version": 1,
  "securityGroups": [],
  "displayName": "Connect — CRM events",
  "categories": [
    "MARKETING",
    "EMAIL_MARKETING",
    "REMARKETING"
  ],
  "brand": {
    "id": "connect",
    "displayName": "Connect"
  },
  "description": "Sends product views, carts, checkouts, purchases and leads with the shopper's email to Connect, which delivers them to Oracle Responsys, Salesforce Marketing Cloud or RD Station Marketing.",
  "containerContexts": [
    "WEB"
  ]
}


___TEMPLATE_PARAMETERS___

[
  {
    "type": "TEXT",
    "name": "endpoint",
    "displayName": "Connect endpoint",
    "simpleValueType": true,
    "help": "The base URL of your Connect installation, e.g. https://connect.example.com (no path). Also set it in this template's Permissions \u2192 Sends pixels.",
    "valueValidators": [
      {
        "type": "NON_EMPTY"
      },
      {
        "type": "REGEX",
        "args": [
          "^https://[a-zA-Z0-9.-]+(:[0-9]+)?$"
        ],
        "errorMessage": "An https URL without a path, e.g. https://connect.example.com"
      }
    ]
  },
  {
    "type": "SELECT",
    "name": "route",
    "displayName": "CRM",
    "macrosInSelect": false,
    "selectItems": [
      {
        "value": "responsys",
        "displayValue": "Oracle Responsys"
      },
      {
        "value": "salesforce",
        "displayValue": "Salesforce Marketing Cloud"
      },
      {
        "value": "rdstation",
        "displayValue": "RD Station Marketing"
      }
    ],
    "simpleValueType": true,
    "defaultValue": "responsys"
  },
  {
    "type": "TEXT",
    "name": "clientId",
    "displayName": "Client ID",
    "simpleValueType": true,
    "help": "Your client id in Connect (lower-case letters, digits, - and _).",
    "enablingConditions": [
      {
        "paramName": "route",
        "paramValue": "rdstation",
        "type": "NOT_EQUALS"
      }
    ],
    "valueValidators": [
      {
        "type": "NON_EMPTY"
      },
      {
        "type": "REGEX",
        "args": [
          "^[a-z0-9][a-z0-9_-]{0,63}$"
        ]
      }
    ]
  },
  {
    "type": "TEXT",
    "name": "tid",
    "displayName": "GA4 client ID (tid)",
    "simpleValueType": true,
    "help": "RD Station finds your client from the GA4 client id, e.g. {{GA4 Client ID}}.",
    "enablingConditions": [
      {
        "paramName": "route",
        "paramValue": "rdstation",
        "type": "EQUALS"
      }
    ],
    "valueValidators": [
      {
        "type": "NON_EMPTY"
      }
    ]
  },
  {
    "type": "SELECT",
    "name": "eventType",
    "displayName": "Event type",
    "macrosInSelect": true,
    "selectItems": [
      {
        "value": "product_view",
        "displayValue": "product_view"
      },
      {
        "value": "add_to_cart",
        "displayValue": "add_to_cart"
      },
      {
        "value": "remove_from_cart",
        "displayValue": "remove_from_cart"
      },
      {
        "value": "cart_abandoned",
        "displayValue": "cart_abandoned"
      },
      {
        "value": "checkout",
        "displayValue": "checkout"
      },
      {
        "value": "purchase",
        "displayValue": "purchase"
      },
      {
        "value": "page_view",
        "displayValue": "page_view"
      },
      {
        "value": "lead",
        "displayValue": "lead"
      },
      {
        "value": "search",
        "displayValue": "search"
      }
    ],
    "simpleValueType": true,
    "defaultValue": "product_view"
  },
  {
    "type": "TEXT",
    "name": "email",
    "displayName": "Email",
    "simpleValueType": true,
    "help": "A variable holding the shopper's email (e.g. {{DLV - user email}}). Without an email nothing is sent.",
    "valueValidators": [
      {
        "type": "NON_EMPTY"
      }
    ]
  },
  {
    "type": "GROUP",
    "name": "productGroup",
    "displayName": "Product",
    "groupStyle": "ZIPPY_OPEN",
    "subParams": [
      {
        "type": "TEXT",
        "name": "productId",
        "displayName": "Product ID",
        "simpleValueType": true
      },
      {
        "type": "TEXT",
        "name": "productName",
        "displayName": "Product name",
        "simpleValueType": true
      },
      {
        "type": "TEXT",
        "name": "productPrice",
        "displayName": "Product price",
        "simpleValueType": true
      },
      {
        "type": "TEXT",
        "name": "productUrl",
        "displayName": "Product URL",
        "simpleValueType": true,
        "help": "Must be on your shop's own host (or an allowed CDN); others are dropped."
      },
      {
        "type": "TEXT",
        "name": "productImage",
        "displayName": "Product image URL",
        "simpleValueType": true
      }
    ]
  },
  {
    "type": "SIMPLE_TABLE",
    "name": "properties",
    "displayName": "Extra properties",
    "simpleTableColumns": [
      {
        "defaultValue": "",
        "displayName": "Name",
        "name": "name",
        "type": "TEXT",
        "valueValidators": [
          {
            "type": "NON_EMPTY"
          }
        ]
      },
      {
        "defaultValue": "",
        "displayName": "Value",
        "name": "value",
        "type": "TEXT"
      }
    ],
    "help": "Sent as top-level fields (e.g. cartId, orderId); at most 50."
  },
  {
    "type": "TEXT",
    "name": "consent",
    "displayName": "Marketing consent",
    "simpleValueType": true,
    "help": "granted or denied, e.g. from Consent Mode's ad_user_data. Clients that require consent keep only granted events."
  },
  {
    "type": "GROUP",
    "name": "signatureGroup",
    "displayName": "Signed events (optional)",
    "groupStyle": "ZIPPY_CLOSED",
    "subParams": [
      {
        "type": "TEXT",
        "name": "sig",
        "displayName": "Signature (sig)",
        "simpleValueType": true,
        "help": "Rendered by your backend: hex HMAC-SHA256 of v1:clientId:email:sigExp."
      },
      {
        "type": "TEXT",
        "name": "sigExp",
        "displayName": "Signature expiry (sigExp)",
        "simpleValueType": true
      }
    ]
  }
]


___SANDBOXED_JS_FOR_WEB_TEMPLATE___

// Connect GTM tag: sends one event to Connect as a pixel (GET), the only request a
// web template can make to another host. The event travels base64url-encoded in `d`.
const sendPixel = require('sendPixel');
const toBase64 = require('toBase64');
const JSON = require('JSON');
const copyFromDataLayer = require('copyFromDataLayer');
const getContainerVersion = require('getContainerVersion');
const makeString = require('makeString');
const logToConsole = require('logToConsole');

const OPTIONAL_FIELDS = ['productId', 'productName', 'productPrice', 'productUrl', 'productImage', 'consent', 'sig', 'sigExp'];
const MAX_PROPERTIES = 50;

const isSet = (v) => v !== undefined && v !== null && makeString(v) !== '';

// A deterministic id of this page event: the same page load (gtm.start) and the same
// dataLayer event (gtm.uniqueEventId) give the same id, so a tag that fires twice for
// one event is stored once.
const eventIdOf = (eventType) => {
  const start = copyFromDataLayer('gtm.start');
  const unique = copyFromDataLayer('gtm.uniqueEventId');
  if (!isSet(start) || !isSet(unique)) {
    return undefined;
  }
  const container = getContainerVersion();
  const containerId = container && container.containerId ? container.containerId : 'GTM';
  return containerId + '-' + makeString(start) + '-' + makeString(unique) + '-' + eventType;
};

// base64url without padding: what Connect's pixel route reads.
const base64url = (s) => toBase64(s).split('+').join('-').split('/').join('_').split('=').join('');

const email = isSet(data.email) ? makeString(data.email) : '';
if (email.indexOf('@') < 1) {
  logToConsole('Connect: no email for this event; nothing sent');
  data.gtmOnFailure();
} else {
  const event = { email: email, eventType: data.eventType };
  if (data.route === 'rdstation') {
    event.tid = makeString(data.tid);
  } else {
    event.clientId = makeString(data.clientId);
  }
  OPTIONAL_FIELDS.forEach((name) => {
    if (isSet(data[name])) {
      event[name] = data[name];
    }
  });
  (data.properties || []).slice(0, MAX_PROPERTIES).forEach((row) => {
    if (row && isSet(row.name) && event[row.name] === undefined) {
      event[row.name] = row.value;
    }
  });
  const eventId = eventIdOf(data.eventType);
  if (eventId) {
    event.eventId = eventId;
  }
  const url = data.endpoint + '/' + data.route + '/p?d=' + base64url(JSON.stringify(event));
  sendPixel(url, data.gtmOnSuccess, data.gtmOnFailure);
}


___WEB_PERMISSIONS___

[
  {
    "instance": {
      "key": {
        "publicId": "send_pixel",
        "versionId": "1"
      },
      "param": [
        {
          "key": "allowedUrls",
          "value": {
            "type": 1,
            "string": "specific"
          }
        },
        {
          "key": "urls",
          "value": {
            "type": 2,
            "listItem": [
              {
                "type": 1,
                "string": "https://connect.example.com/*"
              }
            ]
          }
        }
      ]
    },
    "clientAnnotations": {
      "isEditedByUser": true
    },
    "isRequired": true
  },
  {
    "instance": {
      "key": {
        "publicId": "read_data_layer",
        "versionId": "1"
      },
      "param": [
        {
          "key": "allowedKeys",
          "value": {
            "type": 1,
            "string": "specific"
          }
        },
        {
          "key": "keyPatterns",
          "value": {
            "type": 2,
            "listItem": [
              {
                "type": 1,
                "string": "gtm.start"
              },
              {
                "type": 1,
                "string": "gtm.uniqueEventId"
              }
            ]
          }
        }
      ]
    },
    "clientAnnotations": {
      "isEditedByUser": true
    },
    "isRequired": true
  },
  {
    "instance": {
      "key": {
        "publicId": "read_container_data",
        "versionId": "1"
      },
      "param": []
    },
    "isRequired": true
  },
  {
    "instance": {
      "key": {
        "publicId": "logging",
        "versionId": "1"
      },
      "param": [
        {
          "key": "environments",
          "value": {
            "type": 1,
            "string": "debug"
          }
        }
      ]
    },
    "clientAnnotations": {
      "isEditedByUser": true
    },
    "isRequired": true
  }
]


___TESTS___

scenarios:
- name: Responsys event is sent as a pixel
  code: |-
    mock('copyFromDataLayer', (key) => key === 'gtm.start' ? 1764590000000 : 7);
    mock('getContainerVersion', () => ({containerId: 'GTM-TEST1'}));
    let sent;
    mock('sendPixel', (url, onSuccess, onFailure) => { sent = url; onSuccess(); });
    runCode(mockData);
    assertThat(sent).contains('https://connect.example.com/responsys/p?d=');
    assertApi('gtmOnSuccess').wasCalled();
    assertApi('gtmOnFailure').wasNotCalled();
- name: RD Station sends the tid instead of the client id
  code: |-
    mockData.route = 'rdstation';
    mockData.tid = 'GA4.100000000.200000000';
    let sent;
    mock('sendPixel', (url, onSuccess, onFailure) => { sent = url; onSuccess(); });
    runCode(mockData);
    assertThat(sent).contains('https://connect.example.com/rdstation/p?d=');
    assertApi('gtmOnSuccess').wasCalled();
- name: Nothing is sent without an email
  code: |-
    mockData.email = '';
    runCode(mockData);
    assertApi('sendPixel').wasNotCalled();
    assertApi('gtmOnFailure').wasCalled();
- name: A failed pixel reports failure
  code: |-
    mock('sendPixel', (url, onSuccess, onFailure) => { onFailure(); });
    runCode(mockData);
    assertApi('gtmOnFailure').wasCalled();
    assertApi('gtmOnSuccess').wasNotCalled();
setup: |-
  const mockData = {
    endpoint: 'https://connect.example.com',
    route: 'responsys',
    clientId: 'loja-exemplo',
    eventType: 'product_view',
    email: 'ana@example.com',
    productId: 'SKU-1',
    properties: [{name: 'cartId', value: 'c-1'}]
  };


___NOTES___

Connect's GTM tag template. The README of the Connect repository explains installing it.
